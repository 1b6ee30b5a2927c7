"""Helpers shared by the index tests."""

from __future__ import annotations

from tessera.index import MultiVectorIndex

DIM = 64
# background re-training is switched off unless a test is about it (it makes results time-dependent)
SETTINGS = {"ncentroids": 512, "kmeans_niter": 6, "auto_retrain": False}


def build(docs, ids, path=None, **settings) -> MultiVectorIndex:
    index = MultiVectorIndex.create(path, docs.dim, **{**SETTINGS, **settings})
    index.add(ids, docs)
    return index


def recall(hits, truth, k: int) -> float:
    got = sum(len({h.id for h in row[:k]} & set(t[:k])) for row, t in zip(hits, truth, strict=True))
    return got / (k * len(truth))
