"""``tessera eval``: retrieval quality of a model on a BEIR-layout folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tessera.eval.harness import EvalError, evaluate
from tessera.training.runtime import add_backend_argument

_ROWS = [
    ("nDCG@10", "ndcg@10"),
    ("Recall@100", "recall@100"),
    ("MRR@10", "mrr@10"),
    ("MAP", "map"),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate retrieval quality on a BEIR-layout folder",
        description="Retrieve the top K documents for every judged query of a split and report nDCG@10, "
        "Recall@100, MRR@10 and MAP (ir_measures; MAP over the K retrieved). Document encodings are "
        "cached, so evaluating the same model on the same corpus again does not re-encode.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", required=True, help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)"
    )
    p.add_argument("--split", default="test", help="qrels split to evaluate")
    p.add_argument(
        "--model",
        required=True,
        help="bm25, minilm (single-vector all-MiniLM-L6-v2 baseline), default, or a checkpoint folder / hub "
        "id: multi-vector (ColBERT, XTR, CRISP) or dense (DupMAE; searched exactly by FAISS inner product)",
    )
    p.add_argument(
        "--method",
        default="exact",
        help="search method for multi-vector models: exact, an index method (plaid, xtr, prf) run on an "
        "in-memory index, or dupmae+rerank (the --first-stage model's FAISS top candidates reranked by "
        "--model with exact MaxSim through the index; --params '{\"candidates\": 200}')",
    )
    p.add_argument(
        "--params", default=None, help="method parameters as a JSON object, e.g. '{\"ncells\": 4}'"
    )
    p.add_argument(
        "--first-stage",
        default=None,
        metavar="MODEL",
        help="dupmae+rerank: the single-vector first-stage model (a DupMAE / dense checkpoint, or minilm)",
    )
    p.add_argument(
        "--posthoc",
        default=None,
        metavar="VARIANT",
        help="post-hoc k-means baseline: cluster an unclustered multi-vector model's stored vectors to the "
        "counts of a CRISP variant (C4x8: 4 per query, 8 per document; C0x8: documents only; R0.25: a "
        "quarter of each text's tokens) before searching",
    )
    p.add_argument("--posthoc-iters", type=int, default=10, help="Lloyd iterations of the post-hoc k-means")
    p.add_argument(
        "--nbits", type=int, choices=[1, 2, 4],
        help="index residual bits (index methods; default: 4 for a CRISP model, else 2)"
    )
    p.add_argument("--k", type=int, default=1000, choices=[100, 1000], help="documents retrieved per query")
    p.add_argument("--batch-size", type=int, default=32, help="encoding batch size")
    p.add_argument(
        "--cache-dir", default=None, help="encoding cache (None: $TESSERA_CACHE_DIR, else ~/.cache/tessera)"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached encodings")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads of torch and ONNX Runtime (None: their choice)"
    )
    add_backend_argument(p, default="torch", what="the multi-vector encoder (queries and documents)")
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object (the last stdout line)"
    )
    p.set_defaults(func=run)
    _register_bench_encode(subparsers)


def _register_bench_encode(subparsers: argparse._SubParsersAction) -> None:
    from tessera.index.cli import bench_subparsers

    b = bench_subparsers(subparsers).add_parser(
        "encode",
        help="encoding speed of the encoder's backends (torch, int8, ONNX Runtime), interleaved A/B",
        description="Single-query latency and document throughput of each backend at each thread count, "
        "measured in interleaved rounds in one process, with the agreement of each backend's vectors with "
        "torch fp32; optionally PyLate (its own venv) on the same inputs. nDCG@10 of a backend: "
        "`tessera eval --backend ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("--data", type=Path, required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    b.add_argument("--model", default="default", help="model name, checkpoint folder or hub id")
    b.add_argument("--split", default="test", help="qrels split whose queries are timed")
    b.add_argument(
        "--backends", default="torch,torch-int8,onnx,onnx-int8", help="comma-separated backends to compare"
    )
    b.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    b.add_argument("--queries", type=int, default=100, help="queries timed one at a time per round")
    b.add_argument("--docs", type=int, default=500, help="documents (evenly spaced over the corpus) per round")
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    b.add_argument("--batch-size", type=int, default=32, help="document batch size")
    b.add_argument("--no-queries", action="store_true", help="skip the query latency")
    b.add_argument("--no-docs", action="store_true", help="skip the document throughput")
    b.add_argument(
        "--pylate",
        metavar="PYTHON",
        help="PyLate's interpreter (benchmarks/peers/pylate/venv/bin/python): PyLate encodes the same "
        "inputs with the same backbone in the same rounds",
    )
    b.add_argument(
        "--onnx-cache", type=Path, default=None, help="exported ONNX models (default: ~/.cache/tessera/onnx)"
    )
    b.add_argument("--json", action="store_true", help="print the report as one JSON object (the last line)")
    b.set_defaults(func=run_bench_encode)


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EvalError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise EvalError(f"{name} must be positive integers, got {text!r}")
    return values


def run_bench_encode(args: argparse.Namespace) -> int:
    from tessera.eval.encode_bench import format_table, run_encode_benchmark
    from tessera.training.runtime import Runtime

    if not args.data.is_dir():
        raise EvalError(f"data folder {args.data} does not exist")
    backends = [Runtime.parse(b.strip()).name for b in args.backends.split(",") if b.strip()]
    report = run_encode_benchmark(
        args.data,
        args.model,
        options=list(dict.fromkeys(backends)),
        threads=_int_list(args.threads, "--threads"),
        n_queries=args.queries,
        n_docs=args.docs,
        rounds=args.rounds,
        batch_size=args.batch_size,
        split=args.split,
        pylate=args.pylate,
        queries=not args.no_queries,
        documents=not args.no_docs,
        cache_dir=args.onnx_cache,
    )
    print(format_table(report))
    if args.json:
        print(json.dumps(report))
    return 0


def _params(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalError(f"--params is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise EvalError("--params must be a JSON object such as '{\"ncells\": 4}'")
    return value


def format_table(result: dict) -> str:
    lines = [
        f"{result['data']} ({result['split']}): {result['queries']} queries, {result['docs']} documents",
        f"model {result['model']}, method {result['method']}, top {result['k']}"
        + (f", backend {result['backend']['queries']}/{result['backend']['documents']} (queries/documents)"
           if "backend" in result else ""),
        "",
    ]
    lines += [f"  {label:<12}{result[key]:.4f}" for label, key in _ROWS]
    if "vectors_per_doc" in result:
        size = f"  {'vectors':<12}{result['vectors_per_doc']:.1f} per document"
        if "index_code_bytes" in result:
            size += f", index codes {result['index_code_bytes'] / 2**20:.1f} MiB"
        elif "index_bytes" in result:
            size += f", index {result['index_bytes'] / 2**20:.1f} MiB"
        lines += [size]
    encode = f"  {'encode':<12}{result['encode_seconds']:.1f} s"
    if "doc_cache" in result:
        encode += f" (document cache {result['doc_cache']})"
    lines += ["", encode, f"  {'search':<12}{result['search_seconds']:.2f} s"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads <= 0:
            raise EvalError(f"--threads must be positive, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    result = evaluate(
        args.data,
        args.model,
        split=args.split,
        method=args.method,
        k=args.k,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        device=args.device,
        params=_params(args.params),
        nbits=args.nbits,
        first_stage=args.first_stage,
        posthoc=args.posthoc,
        posthoc_iters=args.posthoc_iters,
        backend=args.backend,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(format_table(result))
    return 0
