"""CUDA residency: the same queries give the same top-k on the GPU as on the CPU (ties aside), and
every operation of an index opened or created on the GPU works there.

Each test runs twice: on a real GPU (marked ``gpu``, skipped without one) and on ``fake-cuda``
(tests/fake_cuda.py), which runs anywhere and fails on any mix of CPU and CUDA tensors, any
``.numpy()`` of a CUDA tensor and any CUDA tensor handed to the compiled CPU kernel.
"""

from __future__ import annotations

import pytest
import torch
from index_helpers import SETTINGS

from tessera.index import MultiVectorIndex
from tessera.packed import PackedDocuments

METHODS = [
    ("exact", {}),
    ("plaid", {}),
    ("plaid", {"full_rerank": False}),
    ("plaid", {"ncandidates": 40, "ndocs": 20}),  # PLAID's centroid-only cut before reading vectors
    ("xtr", {}),
    ("prf", {}),
    ("prf", {"prf_mode": "retrieve"}),
]


def _ids(hits):
    return [[h.id for h in row] for row in hits]


def _overlap(a, b, k):
    return sum(len(set(x) & set(y)) for x, y in zip(_ids(a), _ids(b), strict=True)) / (k * len(a))


def _on_gpu(index: MultiVectorIndex) -> bool:
    snap = index.snapshot
    return snap.codec.centroids.is_cuda and all(s.codes.is_cuda for s in snap.segments)


@pytest.mark.parametrize("keep_vectors", [True, False], ids=["originals", "codes-only"])
def test_gpu_matches_cpu(tmp_path, corpus, doc_ids, queries, keep_vectors, cuda):
    path = tmp_path / "idx"
    settings = {**SETTINGS, "merge_ratio": 1.0}  # the two adds stay two segments
    cpu = MultiVectorIndex.create(path, corpus.docs.dim, keep_vectors=keep_vectors, **settings)
    cpu.add(doc_ids[:250], corpus.docs.select(range(250)))
    cpu.add(doc_ids[250:], corpus.docs.select(range(250, len(doc_ids))))  # two segments
    cpu.delete(doc_ids[:5])
    cpu.close()
    cpu = MultiVectorIndex.open(path)
    gpu = MultiVectorIndex.open(path, device=cuda)
    assert _on_gpu(gpu) and gpu.stats()["segments"] == 2
    allowed = doc_ids[::3]
    weights = torch.linspace(0.5, 1.5, queries.shape[1]).expand(queries.shape[0], -1)
    for method, params in METHODS:
        a = cpu.search(queries, k=10, method=method, params=params)
        b = gpu.search(queries, k=10, method=method, params=params)
        assert _overlap(a, b, 10) >= 0.97, (method, params)
        assert a[0][0].score == pytest.approx(b[0][0].score, rel=1e-3)
        a = cpu.search(queries, k=10, method=method, params=params, allowed_ids=allowed)
        b = gpu.search(queries, k=10, method=method, params=params, allowed_ids=allowed)
        assert all(h.id in set(allowed) for row in b for h in row)
        assert _overlap(a, b, 10) >= 0.97, (method, params, "filtered")
    for method in ("exact", "plaid"):
        a = cpu.search_with_stats(queries, k=10, method=method, query_weights=weights)[0]
        b = gpu.search_with_stats(queries, k=10, method=method, query_weights=weights)[0]
        assert _overlap(a, b, 10) >= 0.97, (method, "weighted")
    cands = [doc_ids[10:60]] * 2
    assert _ids(cpu.rerank(queries[:2], cands, k=5)) == _ids(gpu.rerank(queries[:2], cands, k=5))
    assert [h.id for h in gpu.score(queries[0], doc_ids[20:30])] == [
        h.id for h in cpu.score(queries[0], doc_ids[20:30])
    ]


def test_gpu_index_is_written_reopened_updated_and_retrained(tmp_path, corpus, doc_ids, queries, cuda):
    n = len(doc_ids)
    path = tmp_path / "idx"
    index = MultiVectorIndex.create(path, corpus.docs.dim, device=cuda, **SETTINGS)
    index.add(doc_ids[:200], corpus.docs.select(range(200)))
    index.close()
    index = MultiVectorIndex.open(path, device=cuda)
    docs = corpus.docs.select(range(200, n))
    gpu_docs = PackedDocuments(docs.vectors.to(cuda), docs.token_ids.to(cuda), docs.lengths.to(cuda))
    index.add(doc_ids[200:], gpu_docs)  # vectors already on the GPU
    index.delete(doc_ids[:10])
    assert _on_gpu(index)
    for method, params in METHODS:
        hits = index.search(queries, k=5, method=method, params=params)
        assert all(len(row) == 5 and not {h.id for h in row} & set(doc_ids[:10]) for row in hits), method
    index.merge()
    assert index.stats()["segments"] == 1 and len(index) == n - 10
    index.retrain()
    assert _on_gpu(index)
    hits = index.search(queries, k=5, method="plaid")
    rescored = index.score(queries[0], [h.id for h in hits[0]])
    assert [h.id for h in rescored] == [h.id for h in hits[0]]
    index.close()
    cpu = MultiVectorIndex.open(path)  # written from the GPU, read on the CPU
    assert len(cpu) == n - 10
    assert _overlap(cpu.search(queries, k=5, method="plaid"), hits, 5) >= 0.97
