"""Quality after incremental additions vs a fresh build (issue: within 1 nDCG@10 point).

Builds an index from half of the corpus, adds the other half (new segments encoded against the
existing centroids, re-training in the background if the residuals drift), and compares nDCG@10 and
recall@10 against exact with an index built from everything at once. Then adds the whole corpus in
batches of --batch documents (in corpus order, as the SDK's bulk upsert sends them), each add's
re-training (if any) run to its end before the next. Uses the encodings cached by
``tessera bench search`` (run that first with the same --data/--model).

    python benchmarks/incremental.py --data /work/shared/data/scifact --model default
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tessera.index import MultiVectorIndex, bench


def evaluate(index, data, truth, method="plaid"):
    hits = index.search(data.queries, k=10, method=method)
    return {
        "recall@10": round(bench._recall(hits, truth, 10), 4),
        "ndcg@10": round(bench._ir_metrics(hits, data)["ndcg@10"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cache", type=Path, default=bench.default_cache_dir())
    ap.add_argument("--keep-vectors", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256, help="documents per add in the batched scenario")
    ap.add_argument("--seed", type=int, default=0, help="the indexes' seed (k-means, sampling)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = bench.load_encoded(args.data, args.model, args.split, args.cache)
    truth = bench.ground_truth(data, args.cache)
    n = len(data.doc_ids)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    first, second = perm[: n // 2], perm[n // 2 :]
    out = {}
    t0 = time.perf_counter()
    fresh = MultiVectorIndex.create(None, data.docs.dim, keep_vectors=args.keep_vectors, seed=args.seed)
    fresh.add(data.doc_ids, data.docs)
    out["fresh"] = {**evaluate(fresh, data, truth), "build_s": round(time.perf_counter() - t0, 1)}
    del fresh
    for retrain in (False, True):
        t0 = time.perf_counter()
        index = MultiVectorIndex.create(
            None, data.docs.dim, keep_vectors=args.keep_vectors, seed=args.seed, auto_retrain=retrain
        )
        index.add([data.doc_ids[i] for i in first], data.docs.select(first))
        index.add([data.doc_ids[i] for i in second], data.docs.select(second))
        index.wait_for_maintenance()
        st = index.stats()
        out[f"half+half (auto_retrain={retrain})"] = {
            **evaluate(index, data, truth),
            "build_s": round(time.perf_counter() - t0, 1),
            "segments": st["segments"],
            "residual_drift": round(st["residual_drift"], 3),
            "codec_trained_on": st["codec_trained_on"],
        }
    for retrain in (False, True):
        t0 = time.perf_counter()
        index = MultiVectorIndex.create(
            None, data.docs.dim, keep_vectors=args.keep_vectors, seed=args.seed, auto_retrain=retrain
        )
        retrainings = 0
        for start in range(0, n, args.batch):
            end = min(start + args.batch, n)
            codec = index.snapshot.codec
            index.add(data.doc_ids[start:end], data.docs.select(range(start, end)))
            index.wait_for_maintenance()
            retrainings += codec is not None and index.snapshot.codec is not codec
        st = index.stats()
        out[f"batches of {args.batch} (auto_retrain={retrain})"] = {
            **evaluate(index, data, truth),
            "build_s": round(time.perf_counter() - t0, 1),
            "retrainings": retrainings,
            "segments": st["segments"],
            "residual_drift": round(st["residual_drift"], 3),
            "codec_trained_on": st["codec_trained_on"],
            "originals_bytes": st["full_vector_bytes"],
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
