"""Command line of the index engine: ``tessera bench search``.

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
        "--json", action="store_true", help="print one JSON object (keyed by method) as the last line"
    )
    p.set_defaults(func=run_search)


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
    )
    print(bench.format_table(results))
    if args.json:
        print(json.dumps(results))
    return 0
