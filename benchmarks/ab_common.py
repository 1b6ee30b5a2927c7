"""What the interleaved A/B scripts share: the data and index arguments, and loading them."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tessera.index import MultiVectorIndex, bench, kernels


def add_data_args(ap: argparse.ArgumentParser, synthetic: bool = True) -> None:
    """--data (or --synthetic N), --model, --split, --cache, --index-dir, --threads, --repeats."""
    ap.add_argument("--data", type=Path, help="BEIR folder" + (" (or --synthetic)" if synthetic else ""))
    if synthetic:
        ap.add_argument("--synthetic", type=int, metavar="VECTORS", help="the bench's synthetic vectors instead")
        ap.add_argument("--queries", type=int, default=100, help="synthetic queries")
    ap.add_argument("--model", default="default")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cache", type=Path, default=bench.default_cache_dir())
    ap.add_argument("--index-dir", type=Path, required=True, help="built by tessera bench search ... --index-dir")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the queries")


def load(args: argparse.Namespace, need_kernel: bool = False) -> tuple[bench.BenchData, MultiVectorIndex]:
    """(the encodings cached by the bench, or its synthetic vectors; the index at --index-dir), with
    torch at --threads; exits when ``need_kernel`` and the compiled kernel is not available."""
    torch.set_num_threads(args.threads)
    if need_kernel and kernels.FUSED is None:
        raise SystemExit("the compiled kernel is not available here (see docs/indexing.md, 'Scoring kernels')")
    if getattr(args, "synthetic", None):
        data = bench.synthetic_data(args.synthetic, 128, args.queries)
    elif args.data:
        data = bench.load_encoded(args.data, args.model, args.split, args.cache)
    else:
        raise SystemExit("give --data" + (" or --synthetic" if hasattr(args, "synthetic") else ""))
    return data, MultiVectorIndex.open(args.index_dir)
