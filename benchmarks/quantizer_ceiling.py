"""Codes-only recall ceiling: how well can any search over reconstructed vectors do at a given size?

For each quantizer of the residuals (vector minus its centroid), reconstruct every token vector, run
full MaxSim over every document with the reconstructions, and report recall@10 against exact MaxSim
on the originals. No pruning is involved, so this bounds any search that reads only the codes.

    tessera bench search --data /work/shared/data/scifact --model default --methods plaid \
        --index-dir /tmp/scifact-index                        # encodings cached, index kept
    python benchmarks/quantizer_ceiling.py --data /work/shared/data/scifact --index-dir /tmp/scifact-index \
        --variants scalar,pq16x8,pq32x8,opq32x8,pq64x8

``scalar`` is the index's own codec (2-bit per-dimension residuals at the default nbits); ``pqMxB`` is a
faiss ProductQuantizer with M sub-quantizers of B bits (M * B / 8 bytes); ``opq`` rotates first. Bytes
per vector are the residual code plus the 4-byte centroid id. Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from tessera.index import MultiVectorIndex, bench


def product_quantized(residuals: np.ndarray, sample: np.ndarray, m: int, nbits: int, rotate: bool) -> np.ndarray:
    """Residuals encoded and decoded by a (rotated) product quantizer trained on ``sample``."""
    opq = None
    if rotate:
        opq = faiss.OPQMatrix(residuals.shape[1], m)
        opq.train(sample)
        residuals, sample = opq.apply_py(residuals), opq.apply_py(sample)
    pq = faiss.ProductQuantizer(residuals.shape[1], m, nbits)
    pq.train(sample)
    decoded = pq.decode(pq.compute_codes(residuals))
    return opq.reverse_transform(decoded) if opq is not None else decoded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--split", default="test")
    p.add_argument("--index-dir", type=Path, required=True, help="a one-segment index built with the fp16 originals")
    p.add_argument("--variants", default="scalar,pq32x8,opq32x8,pq64x8")
    p.add_argument("--sample", type=int, default=131072, help="residuals to train each quantizer on")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    data = bench.load_encoded(args.data, args.model, args.split, bench.default_cache_dir())
    truth = bench.ground_truth(data, bench.default_cache_dir())
    snap = MultiVectorIndex.open(args.index_dir).snapshot
    if len(snap.segments) != 1 or snap.segments[0].vectors is None:
        raise SystemExit("needs a one-segment index that keeps the fp16 originals")
    seg = snap.segments[0]
    originals = seg.vectors.float()
    centroids = snap.codec.centroids[seg.codes.long()]
    residuals = (originals - centroids).numpy()
    rng = np.random.default_rng(0)
    sample = residuals[rng.choice(len(residuals), min(args.sample, len(residuals)), replace=False)]
    doc_of = torch.repeat_interleave(torch.arange(seg.n_docs), seg.lengths.long())
    truth_g = [set(snap.global_index(row).tolist()[:10]) for row in truth]
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        if variant == "scalar":
            recon = snap.codec.decompress(seg.codes, seg.residuals)
            code_bytes = snap.codec.nbits * originals.shape[1] // 8
        else:
            match = re.fullmatch(r"(o?)pq(\d+)x(\d+)", variant)
            if not match:
                raise SystemExit(f"unknown variant {variant!r}: scalar, pqMxB or opqMxB")
            m, nbits = int(match[2]), int(match[3])
            recon = centroids + torch.from_numpy(product_quantized(residuals, sample, m, nbits, bool(match[1])))
            code_bytes = m * nbits // 8
        build_s = time.perf_counter() - t0
        hits = []
        for q in range(len(data.query_ids)):
            sims = recon @ data.queries[q].float().T
            best = torch.full((seg.n_docs, sims.shape[1]), -torch.inf)
            best.scatter_reduce_(0, doc_of[:, None].expand(-1, sims.shape[1]), sims, "amax")
            hits.append(len(truth_g[q] & set(best.sum(1).topk(10).indices.tolist())) / 10)
        mse = float(((recon - originals) ** 2).sum(1).mean())
        row = {"variant": variant, "bytes_per_vector": code_bytes + 4, "recall@10": round(float(np.mean(hits)), 4),
               "squared_error": round(mse, 5), "train_encode_s": round(build_s, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
