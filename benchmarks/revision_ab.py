"""Interleaved A/B of ``plaid`` search as in an earlier git revision of index/plaid.py against the working tree.

The old index/plaid.py is loaded from ``git show REV:index/plaid.py`` as a module of its own and runs on
today's index, kernels and segments (so it must still fit their interfaces); query by query in one
process (old, then new, on the same query), so a noisy machine affects both alike. Prints one JSON
object per parameter set: medians, the ratio, whether the top-k agree, and the dot products of each.
Uses the encodings cached by ``tessera bench search`` (same --data/--model), or the same synthetic
vectors (same --synthetic N), and opens --index-dir (build it with ``tessera bench search ...
--index-dir DIR``).

    python benchmarks/revision_ab.py --rev 380fd79 --data /work/shared/data/scifact \
        --index-dir /tmp/scifact-index --threads 1
    python benchmarks/revision_ab.py --rev 380fd79 --synthetic 1000000 --index-dir /tmp/synthetic-1m
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from ab_common import add_data_args, load

from tessera.index import plaid


def load_revision(rev: str):
    """index/plaid.py at git revision ``rev``, imported as module ``plaid_<rev>``."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:index/plaid.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"plaid_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="git revision of the baseline index/plaid.py")
    add_data_args(ap)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--grid", type=json.loads, default=[{}, {"full_rerank": False}], help="JSON list of params")
    args = ap.parse_args()
    old = load_revision(args.rev)
    data, index = load(args)
    snap = index.snapshot
    queries, mask = data.queries, snap.alive_all
    for params in args.grid:
        times: dict[str, list[float]] = {"old": [], "new": []}
        products = {"old": 0, "new": 0}
        same = 0
        for _ in range(args.repeats):
            for q in range(queries.shape[0]):
                hits = {}
                for name, module in (("old", old), ("new", plaid)):
                    stats: dict = {}
                    t0 = time.perf_counter()
                    hits[name] = module.search(snap, queries[q : q + 1], args.k, params, mask, stats=stats)[1]
                    times[name].append(time.perf_counter() - t0)
                    products[name] += stats["dot_products"]
                same += bool(torch.equal(hits["old"], hits["new"]))
        p50 = {name: statistics.median(t) * 1000 for name, t in times.items()}
        runs = len(times["new"])
        print(
            json.dumps(
                {
                    "params": params,
                    "rev": args.rev,
                    "threads": args.threads,
                    "p50_ms_old": round(p50["old"], 2),
                    "p50_ms_new": round(p50["new"], 2),
                    "ratio": round(p50["new"] / p50["old"], 3),
                    "identical_topk": f"{same}/{runs}",
                    "dot_products_old": products["old"] // runs,
                    "dot_products_new": products["new"] // runs,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
