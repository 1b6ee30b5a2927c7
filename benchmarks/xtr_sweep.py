"""XTR at k=10 over a built index: nDCG@10 and scoring dot products per query for several (nprobe, k').

    tessera bench search --data /work/shared/data/scifact --model default --index-dir /tmp/scifact-index ...
    python benchmarks/xtr_sweep.py --data /work/shared/data/scifact --index-dir /tmp/scifact-index --split train

Encodings come from ``tessera eval``'s cache (the bench fills it). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tessera.index.bench import _ir_metrics, default_cache_dir, load_encoded
from tessera.index.core import MultiVectorIndex


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--index-dir", type=Path, required=True, help="an index built from the same model and corpus")
    p.add_argument("--split", default="test")
    p.add_argument("--settings", default="8:256,10:256,12:256,16:256", help="nprobe:k_prime,...")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_encoded(args.data, args.model, args.split, default_cache_dir())
    index = MultiVectorIndex.open(args.index_dir)
    out = {}
    for item in args.settings.split(","):
        nprobe, k_prime = (int(x) for x in item.split(":"))
        hits, dots, lat = [], [], []
        for q in range(len(data.query_ids)):
            t0 = time.perf_counter()
            h, st = index.search_with_stats(
                data.queries[q : q + 1], k=10, method="xtr", params={"nprobe": nprobe, "k_prime": k_prime}
            )
            lat.append((time.perf_counter() - t0) * 1000)
            hits.extend(h)
            dots.append(st.get("dot_products", 0))
        out[f"nprobe={nprobe},k'={k_prime}"] = {
            "ndcg@10": round(_ir_metrics(hits, data)["ndcg@10"], 4),
            "dot_products": round(statistics.fmean(dots)),
            "p50_ms": round(statistics.median(lat), 2),
        }
    index.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
