"""Interleaved A/B of ``plaid`` with the compiled kernel on one thread against two (``kernels.MAX_THREADS``).

Same code, same process, query by query (one, then two kernel threads, through ``search_with_stats``
as the bench times it); torch at --threads (2 lets a kernel call take a second thread). Prints one
JSON object per parameter set. Opens --index-dir (built by ``tessera bench search ... --index-dir``)
and the encodings cached by the bench (same --data/--model).

    python benchmarks/kernel_threads_ab.py --data /work/shared/data/scifact --index-dir /tmp/scifact-index
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from ab_common import add_data_args, load

from tessera.index import kernels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(ap, synthetic=False)
    ap.set_defaults(threads=2)
    ap.add_argument("--grid", type=json.loads, default=[{}, {"full_rerank": False}], help="JSON list of params")
    args = ap.parse_args()
    data, index = load(args, need_kernel=True)
    queries = data.queries
    for params in args.grid:
        times: dict[int, list[float]] = {1: [], 2: []}
        same = 0
        for _ in range(args.repeats):
            for q in range(queries.shape[0]):
                ids = {}
                for n in (1, 2):
                    kernels.MAX_THREADS = n
                    t0 = time.perf_counter()
                    hits, _ = index.search_with_stats(queries[q : q + 1], k=10, method="plaid", params=params)
                    times[n].append(time.perf_counter() - t0)
                    ids[n] = [h.id for h in hits[0]]
                same += ids[1] == ids[2]
        p50 = {n: statistics.median(t) * 1000 for n, t in times.items()}
        result = {
            "params": params,
            "torch_threads": args.threads,
            "p50_ms_one_kernel_thread": round(p50[1], 2),
            "p50_ms_two_kernel_threads": round(p50[2], 2),
            "ratio": round(p50[2] / p50[1], 3),
            "identical_topk": f"{same}/{len(times[1])}",
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
