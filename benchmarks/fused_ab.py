"""Interleaved A/B of PLAID with the compiled scoring kernel (index/_fused.c) against the torch path.

Query by query in one process (kernel, then torch, on the same query), so that a noisy machine affects
both alike; prints one JSON object per configuration with the medians and whether the top-k agree.
Uses the encodings cached by ``tessera bench search`` (same --data/--model), or the same synthetic
vectors (same --synthetic N), and opens --index-dir (build it with ``tessera bench search ...
--index-dir DIR``; keep_vectors is on there).

    python benchmarks/fused_ab.py --data /work/shared/data/scifact --index-dir /tmp/scifact-index \
        --threads 1 --kernels avx512,avx2
    python benchmarks/fused_ab.py --synthetic 1000000 --index-dir /tmp/synthetic-1m --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from ab_common import add_data_args, load

from tessera.index import kernels, plaid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(ap)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--kernels", default="avx512,avx2", help="compiled kernels to compare with torch")
    args = ap.parse_args()
    data, index = load(args, need_kernel=True)
    snap = index.snapshot
    queries, mask = data.queries, snap.alive_all
    fused = kernels.FUSED
    for name in args.kernels.split(","):
        if not fused.select(name):
            print(json.dumps({"kernel": name, "skipped": "this CPU cannot run it"}), flush=True)
            continue
        for label, params in (("plaid", {}), ("plaid-compressed", {"full_rerank": False})):
            times: dict[str, list[float]] = {name: [], "torch": []}
            same = 0
            for _ in range(args.repeats):
                for q in range(queries.shape[0]):
                    hits = {}
                    for engine in (name, "torch"):
                        kernels.FUSED = fused if engine == name else None
                        t0 = time.perf_counter()
                        hits[engine] = plaid.search(snap, queries[q : q + 1], args.k, params, mask)[1]
                        times[engine].append(time.perf_counter() - t0)
                    same += bool(torch.equal(hits[name], hits["torch"]))
            kernels.FUSED = fused
            p50 = {e: statistics.median(t) * 1000 for e, t in times.items()}
            result = {
                "method": label,
                "kernel": name,
                "threads": args.threads,
                "p50_ms_kernel": round(p50[name], 2),
                "p50_ms_torch": round(p50["torch"], 2),
                "ratio": round(p50[name] / p50["torch"], 3),
                "p95_ms_kernel": round(statistics.quantiles(times[name], n=20)[-1] * 1000, 2),
                "p95_ms_torch": round(statistics.quantiles(times["torch"], n=20)[-1] * 1000, 2),
                "identical_topk": f"{same}/{len(times[name])}",
            }
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
