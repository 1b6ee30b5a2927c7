"""Interleaved A/B of ``plaid`` search as in an earlier git revision of index/plaid.py against the working tree.

The old index/plaid.py is loaded from ``git show REV:index/plaid.py`` as a module of its own and runs on
today's index, kernels and segments (so it must still fit their interfaces); with --kernel the old arm
also runs the revision's index/_fused.c, compiled into a temporary folder (same flags as setup.py) and
put in place of ``kernels.FUSED`` while it runs (the C entry points must take today's arguments; at
--threads 2 each build keeps its own second-thread worker, which polls for 0.5 ms after its last call,
so compare kernels at --threads 1). Query by query in one
process (old, then new, on the same query), so a noisy machine affects both alike. Prints one JSON
object per parameter set: medians, the ratio, whether the top-k agree, and the dot products of each.
Uses the encodings cached by ``tessera bench search`` (same --data/--model), or the same synthetic
vectors (same --synthetic N), and opens --index-dir (build it with ``tessera bench search ...
--index-dir DIR``).

    python benchmarks/revision_ab.py --rev 380fd79 --data /work/shared/data/scifact \
        --index-dir /tmp/scifact-index --threads 1
    python benchmarks/revision_ab.py --rev 380fd79 --synthetic 1000000 --index-dir /tmp/synthetic-1m
    python benchmarks/revision_ab.py --rev HEAD --kernel --plaid-from-tree --data /work/shared/data/scifact \
        --index-dir /tmp/scifact-index   # only the C kernel differs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
from ab_common import add_data_args, load

from tessera.index import kernels, plaid

ROOT = Path(__file__).resolve().parent.parent


def _show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_revision(rev: str):
    """index/plaid.py at git revision ``rev``, imported as module ``plaid_<rev>``."""
    path = Path(tempfile.mkdtemp()) / f"plaid_{rev}.py"
    path.write_text(_show(rev, "index/plaid.py"))
    return _module(path.stem, path)


def load_kernel(rev: str):
    """index/_fused.c at git revision ``rev``, compiled as setup.py does and imported as ``fused_<rev>._fused``
    (the module's init function is named after its last component)."""
    folder = Path(tempfile.mkdtemp())
    src = folder / "_fused.c"
    src.write_text(_show(rev, "index/_fused.c"))
    out = folder / ("_fused" + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    include = sysconfig.get_paths()["include"]
    subprocess.run([*cc, "-O3", "-pthread", "-shared", "-fPIC", f"-I{include}", str(src), "-o", str(out)], check=True)
    module = _module(f"fused_{rev}._fused", out)
    if module.kernel() != kernels.FUSED.kernel():
        module.select(kernels.FUSED.kernel())
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="git revision of the baseline index/plaid.py")
    ap.add_argument("--kernel", action="store_true", help="the baseline also runs the revision's index/_fused.c")
    ap.add_argument("--plaid-from-tree", action="store_true", help="both arms run the working tree's plaid.py")
    add_data_args(ap)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--grid", type=json.loads, default=[{}, {"full_rerank": False}], help="JSON list of params")
    args = ap.parse_args()
    old = plaid if args.plaid_from_tree else load_revision(args.rev)
    data, index = load(args, need_kernel=args.kernel)
    fused = {"old": load_kernel(args.rev) if args.kernel else kernels.FUSED, "new": kernels.FUSED}
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
                    kernels.FUSED = fused[name]
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
                    "baseline": ("plaid.py of the working tree" if args.plaid_from_tree else "plaid.py")
                    + (" + _fused.c" if args.kernel else ""),
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
