"""Where PLAID loses recall: the share of the exact top-10 that survives each stage, and stage timings.

Uses the encodings cached by ``tessera bench search`` (same --data/--model) and keeps the built index in
--index-dir so that later runs open it instead of building again.

    python benchmarks/plaid_stages.py --data /work/shared/data/scifact --model default \
        --index-dir /tmp/scifact-index --grid '[{}, {"ndocs": 512}]'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tessera.index import MultiVectorIndex, bench, plaid
from tessera.index.kernels import sum_best, top_rows


def stage_recall(index, queries, truth_g, params: dict, k: int = 10, clock=time.perf_counter) -> dict:
    snap = index.snapshot
    p = plaid.resolve(k, params)
    mask = snap.alive_all
    cov = {"candidates": [], "stage2": [], "stage3": [], "final": []}
    ms = {"stage1+2": [], "stage3": [], "stage4": [], "total": []}
    counts = {"candidates": [], "stage2_vectors": [], "stage3_vectors": [], "stage4_docs": []}
    for q in range(queries.shape[0]):
        want = set(truth_g[q][:k])
        query = queries[q]
        st: dict = {}
        t0 = clock()
        ST, cmax, cells = plaid.probe(snap, query, p["ncells"], p["bf16"])
        best, gidx = plaid.stage2(snap, query, ST, cmax, cells, mask, p, st)
        cov["candidates"].append(len(want & set(gidx.tolist())) / k)
        if gidx.numel() > p["ndocs"]:
            best, gidx = plaid._keep(best, gidx, top_rows(best, p["ndocs"]))
        t1 = clock()
        cov["stage2"].append(len(want & set(gidx.tolist())) / k)
        best, gidx, seen = plaid.stage3(snap, query, best, gidx, cmax, p, st)
        t2 = clock()
        cov["stage3"].append(len(want & set(gidx.tolist())) / k)
        best = plaid.stage4(snap, query, best, gidx, cmax, seen, p, st)
        scores = sum_best(best, snap.lengths_all[gidx], None)
        final = gidx[scores.topk(min(k, gidx.numel())).indices]
        t3 = clock()
        cov["final"].append(len(want & set(final.tolist())) / k)
        for name, v in (("stage1+2", t1 - t0), ("stage3", t2 - t1), ("stage4", t3 - t2), ("total", t3 - t0)):
            ms[name].append(v * 1000)
        lq = query.shape[0]
        counts["candidates"].append(st.get("candidates", 0))
        counts["stage2_vectors"].append(st.get("stage2_dot_products", 0) // lq)
        counts["stage3_vectors"].append(st.get("stage3_dot_products", 0) // lq)
        counts["stage4_docs"].append(gidx.numel())
    return {
        "params": p,
        **{f"recall_{n}": round(statistics.mean(v), 4) for n, v in cov.items()},
        **{f"p50_ms_{n}": round(statistics.median(v), 2) for n, v in ms.items()},
        **{f"mean_{n}": round(statistics.mean(v)) for n, v in counts.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cache", type=Path, default=bench.default_cache_dir())
    ap.add_argument("--index-dir", type=Path, required=True, help="built here once, opened afterwards")
    ap.add_argument("--ncentroids", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this thread's CPU time (steadier on a shared machine; use with --threads 1)",
    )
    ap.add_argument("--grid", type=json.loads, default=[{}], help="JSON list of plaid parameter sets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = bench.load_encoded(args.data, args.model, args.split, args.cache)
    truth = bench.ground_truth(data, args.cache)
    if (args.index_dir / "manifest.json").exists():
        index = MultiVectorIndex.open(args.index_dir)
    else:
        t0 = time.perf_counter()
        settings = {"ncentroids": args.ncentroids} if args.ncentroids else {}
        index = MultiVectorIndex.create(args.index_dir, data.docs.dim, keep_vectors=True, **settings)
        index.add(data.doc_ids, data.docs)
        index.flush()
        print(json.dumps({"build_s": round(time.perf_counter() - t0, 1), **index.stats()}), flush=True)
    snap = index.snapshot
    truth_g = [snap.global_index(row).tolist() for row in truth]
    nq = min(args.queries, len(data.query_ids))
    queries = data.queries[:nq]
    stage_recall(index, queries[:5], truth_g, {})  # warm caches
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    for params in args.grid:
        print(json.dumps(stage_recall(index, queries, truth_g[:nq], params, clock=clock)), flush=True)


if __name__ == "__main__":
    main()
