"""CUDA residency: the same queries give the same top-k on the GPU as on the CPU (ties aside)."""

from __future__ import annotations

import pytest
import torch
from index_helpers import SETTINGS

from tessera.index import MultiVectorIndex

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _ids(hits):
    return [[h.id for h in row] for row in hits]


@pytest.mark.parametrize("method", ["exact", "plaid", "xtr", "prf"])
def test_gpu_matches_cpu(tmp_path, corpus, doc_ids, queries, method):
    path = tmp_path / "idx"
    cpu = MultiVectorIndex.create(path, corpus.docs.dim, keep_vectors=True, **SETTINGS)
    cpu.add(doc_ids, corpus.docs)
    cpu.close()
    cpu = MultiVectorIndex.open(path)
    gpu = MultiVectorIndex.open(path, device="cuda")
    assert gpu.snapshot.segments[0].codes.is_cuda and gpu.snapshot.codec.centroids.is_cuda
    a = cpu.search(queries, k=10, method=method)
    b = gpu.search(queries, k=10, method=method)
    same = sum(len(set(x) & set(y)) for x, y in zip(_ids(a), _ids(b), strict=True)) / (10 * len(a))
    assert same >= 0.97
    assert a[0][0].score == pytest.approx(b[0][0].score, rel=1e-3)


def test_gpu_updates_merge_and_rerank(corpus, doc_ids, queries):
    index = MultiVectorIndex.create(None, corpus.docs.dim, device="cuda", **SETTINGS)
    index.add(doc_ids[:200], corpus.docs.select(range(200)))
    index.add(doc_ids[200:], corpus.docs.select(range(200, len(doc_ids))))
    index.delete(doc_ids[:10])
    index.merge()
    assert index.stats()["segments"] == 1 and len(index) == len(doc_ids) - 10
    hits = index.search(queries, k=5, method="plaid")
    rescored = index.score(queries[0], [h.id for h in hits[0]])
    assert [h.id for h in rescored] == [h.id for h in hits[0]]
