"""Command line of the index engine: ``tessera index build|info|search``, ``tessera bench search``, and the
batch indexing job ``tessera index --corpus ...`` (its options and code live in ``tessera.ingest``).

``bench`` is a command group: other parts of Tessera add their own ``bench`` subcommands through
``bench_subparsers(subparsers)``, which creates the group once and returns it afterwards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tessera.errors import DataError


def bench_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``bench`` command's subparsers (created on first use, shared by every module)."""
    bench = subparsers.choices.get("bench")
    if bench is None:
        bench = subparsers.add_parser("bench", help="benchmarks (search, ...)")
        group = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
        group.required = True
        return group
    for action in bench._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("the bench command has no subcommands")  # pragma: no cover


def register(subparsers: argparse._SubParsersAction) -> None:
    from tessera.index.bench import ALL_METHODS
    from tessera.index.codec import QUANTIZERS
    from tessera.ingest.cli import JOB_DESCRIPTION, add_job_arguments

    index = subparsers.add_parser(
        "index",
        help="index a corpus into a collection (--corpus ...), or build, inspect and query a bare index folder",
        description=JOB_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_job_arguments(index)
    index.set_defaults(func=run_index)
    isub = index.add_subparsers(
        dest="index_command", metavar="ACTION", title="actions on a bare index folder (instead of --corpus)"
    )
    b = isub.add_parser("build", help="encode a corpus (BEIR corpus.jsonl or folder) and build an index")
    b.add_argument("--data", type=Path, required=True, help="corpus.jsonl or a BEIR folder holding one")
    b.add_argument("--model", default="default", help="model name, checkpoint folder or hub id")
    b.add_argument("--out", type=Path, required=True, help="new index folder")
    b.add_argument(
        "--nbits", type=int, choices=(1, 2, 4), help="bits per residual (default: 4 for a CRISP model, else 2)"
    )
    b.add_argument("--keep-vectors", action="store_true", help="also store fp16 originals (exact rerank)")
    b.add_argument("--ncentroids", type=int, help="override the number of centroids")
    b.add_argument("--quantizer", default="scalar", choices=QUANTIZERS, help="residual code (docs/indexing.md)")
    b.add_argument("--batch", type=int, default=2048, help="documents encoded and added per batch")
    b.set_defaults(func=run_build)
    i = isub.add_parser("info", help="verify an index folder (checksums) and print its statistics as JSON")
    i.add_argument("path", type=Path)
    i.set_defaults(func=run_info)
    s = isub.add_parser("search", help="encode queries and search an index")
    s.add_argument("path", type=Path)
    s.add_argument("query", nargs="+")
    s.add_argument("--model", default="default", help="the model the index was built with")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--method", default="plaid")
    s.add_argument(
        "--params", type=json.loads, default=None, help="method parameters as JSON, e.g. '{\"ndocs\": 512}'"
    )
    s.set_defaults(func=run_query)

    p = bench_subparsers(subparsers).add_parser(
        "search",
        help="latency, recall against exact MaxSim and nDCG of the index's search methods",
        description="Encode a BEIR folder (cached), build an index and measure every method; "
        "or use clustered synthetic vectors with --synthetic.",
    )
    p.add_argument("--data", type=Path, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--model", default="default", help="model name, checkpoint folder or hub id")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument(
        "--synthetic", type=int, metavar="VECTORS", help="clustered synthetic token vectors instead"
    )
    p.add_argument("--dim", type=int, default=128, help="dimension of synthetic vectors")
    p.add_argument("--queries", type=int, help="synthetic queries (default 100) / cap on real queries")
    p.add_argument(
        "--methods",
        default=",".join(ALL_METHODS),
        help="comma-separated subset of: " + ", ".join(ALL_METHODS),
    )
    p.add_argument("--nbits", type=int, default=2, choices=(1, 2, 4))
    p.add_argument(
        "--quantizer", default="scalar", choices=QUANTIZERS, help="residual code (index setting quantizer)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--no-keep-vectors",
        action="store_true",
        help="store only the compressed codes (no exact rerank from fp16 originals)",
    )
    p.add_argument("--ncentroids", type=int, help="override the number of centroids")
    p.add_argument("--exact-queries", type=int, default=50, help="queries timed for the (slow) exact method")
    p.add_argument("--index-dir", type=Path, help="keep the built index here (default: a temporary folder)")
    p.add_argument(
        "--cache", type=Path, help="encodings cache (default: $TESSERA_CACHE_DIR or ~/.cache/tessera)"
    )
    p.add_argument(
        "--peers",
        default="",
        help="comma-separated peer engines run side by side on the same vectors: colbert-ai, pylate-fastplaid "
        "(each in its own venv, made by benchmarks/peers/setup.sh)",
    )
    p.add_argument(
        "--peers-dir", type=Path, default=Path("benchmarks/peers"), help="the peers' folder (default: %(default)s)"
    )
    p.add_argument(
        "--block", type=int, default=10, help="queries per engine turn when interleaving (default: %(default)s)"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (keyed by method and peer) as the last line"
    )
    p.set_defaults(func=run_search)


def run_index(args: argparse.Namespace) -> int:
    """``tessera index`` with no action: the batch job (needs --corpus)."""
    from tessera.ingest.cli import run_job

    if args.corpus is None:
        raise DataError("give --corpus PATH (the batch indexing job) or an action: build, info, search")
    return run_job(args)


def run_search(args: argparse.Namespace) -> int:
    from tessera.index import bench

    cache = args.cache or bench.default_cache_dir()
    if args.synthetic:
        data = bench.synthetic_data(args.synthetic, args.dim, args.queries or 100)
    else:
        if args.data is None:
            raise DataError("give --data DIR (a BEIR folder) or --synthetic VECTORS")
        if not args.data.is_dir():
            raise DataError(f"data folder {args.data} does not exist")
        data = bench.load_encoded(args.data, args.model, args.split, cache)
        if args.queries and args.queries < len(data.query_ids):
            data.query_ids, data.queries = data.query_ids[: args.queries], data.queries[: args.queries]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = {"ncentroids": args.ncentroids} if args.ncentroids else {}
    if args.quantizer != "scalar":
        settings["quantizer"] = args.quantizer
    results = bench.run_benchmark(
        data,
        methods,
        nbits=args.nbits,
        threads=args.threads,
        keep_vectors=not args.no_keep_vectors,
        index_dir=args.index_dir,
        cache=cache,
        exact_queries=args.exact_queries,
        settings=settings,
        peers=[x.strip() for x in args.peers.split(",") if x.strip()],
        peers_dir=args.peers_dir,
        block=max(1, args.block),
    )
    print(bench.format_table(results))
    if args.json:
        print(json.dumps(results))
    return 0


def run_build(args: argparse.Namespace) -> int:
    import time

    from tessera.datasets import load_corpus
    from tessera.index import MultiVectorIndex
    from tessera.index.codec import default_nbits
    from tessera.training.checkpoints import load_encoder

    source = args.data / "corpus.jsonl" if args.data.is_dir() else args.data
    if not source.is_file():
        raise DataError(f"no corpus at {source}")
    corpus = load_corpus(source)
    ids = list(corpus)
    encoder = load_encoder(args.model)
    nbits = args.nbits or default_nbits(encoder.config.clustered)
    settings = {"ncentroids": args.ncentroids} if args.ncentroids else {}
    if args.quantizer != "scalar":
        settings["quantizer"] = args.quantizer
    t0 = time.perf_counter()
    with MultiVectorIndex.create(
        args.out, encoder.dim, nbits=nbits, keep_vectors=args.keep_vectors, **settings
    ) as index:
        for start in range(0, len(ids), args.batch):
            part = ids[start : start + args.batch]
            docs = encoder.encode_documents([corpus[d].full_text for d in part], progress=True)
            index.add(part, docs)
            index.flush()
        print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), **index.stats()}))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from tessera.index import MultiVectorIndex

    index = MultiVectorIndex.open(args.path)
    print(json.dumps(index.stats(), indent=1))
    return 0


def run_query(args: argparse.Namespace) -> int:
    from tessera.index import MultiVectorIndex
    from tessera.training.checkpoints import load_encoder

    index = MultiVectorIndex.open(args.path)
    encoder = load_encoder(args.model)
    if encoder.dim != index.dim:
        raise DataError(f"model {args.model!r} has dimension {encoder.dim}, the index {index.dim}")
    try:
        hits = index.search(
            encoder.encode_queries(args.query), k=args.k, method=args.method, params=args.params
        )
    except ValueError as exc:
        raise DataError(str(exc)) from None
    for query, row in zip(args.query, hits, strict=True):
        print(f"Q: {query}")
        for rank, h in enumerate(row, 1):
            print(f"  {rank:3d}. {h.score:8.3f}  {h.id}")
    return 0
