"""Storage, exact search, updates, filters, rerank and input validation on an in-memory index."""

from __future__ import annotations

import math

import pytest
import torch
from index_helpers import DIM, build, recall

from tessera.index import Hit, MultiVectorIndex
from tessera.packed import PackedDocuments


def test_exact_search_matches_uncompressed_ground_truth(built, queries, truth):
    hits = built.search(queries, k=10, method="exact")
    assert len(hits) == len(queries)
    assert all(len(row) == 10 for row in hits)
    assert all(row[i].score >= row[i + 1].score for row in hits for i in range(9))
    assert recall(hits, truth, 10) >= 0.85  # only 2-bit compression (at dim 64) separates it from the truth
    assert all(isinstance(h, Hit) for h in hits[0])


def test_keep_vectors_makes_exact_and_rerank_lossless(corpus, doc_ids, queries, truth):
    index = build(corpus.docs, doc_ids, keep_vectors=True)
    assert recall(index.search(queries, k=10, method="exact"), truth, 10) == 1.0
    full = index.search(queries, k=10, method="plaid")
    compressed = index.search(queries, k=10, method="plaid", params={"full_rerank": False})
    assert recall(full, truth, 10) >= 0.95
    assert recall(full, truth, 10) > recall(compressed, truth, 10)
    st = index.stats()
    assert st["full_vector_bytes"] == st["stored_vectors"] * DIM * 2
    assert st["bytes_per_vector"] == 4 + DIM * 2 // 8


def test_single_query_2d_and_counts(built, queries, doc_ids):
    hits = built.search(queries[0], k=3, method="exact")
    assert len(hits) == 1 and len(hits[0]) == 3
    assert len(built) == len(doc_ids)
    assert doc_ids[5] in built and "nope" not in built
    assert sorted(built.ids()) == sorted(doc_ids)
    st = built.stats()
    assert st["documents"] == len(doc_ids) and st["segments"] == 1
    assert st["bytes_per_vector"] == 4 + DIM * 2 // 8
    assert st["vectors"] == int(built.snapshot.lengths_all.sum())


def test_k_larger_than_collection_returns_all(corpus, doc_ids):
    index = build(corpus.docs.select(range(5)), doc_ids[:5])
    hits = index.search(torch.randn(2, 4, DIM), k=50, method="exact")
    assert [len(r) for r in hits] == [5, 5]


def test_score_reranks_given_ids_exactly(built, queries, doc_ids):
    top = built.search(queries[0], k=10, method="exact")[0]
    ids = [h.id for h in reversed(top)] + [doc_ids[0]]
    scored = built.score(queries[0], ids)
    assert [h.id for h in scored[:10]] == [h.id for h in top]
    assert all(math.isclose(a.score, b.score, rel_tol=1e-5) for a, b in zip(scored, top, strict=False))
    with pytest.raises(KeyError, match="missing-doc"):
        built.score(queries[0], ["missing-doc", doc_ids[0]])


def test_upsert_delete_and_filter(corpus, doc_ids, queries):
    docs = corpus.docs
    index = build(docs.select(range(100)), doc_ids[:100])
    target = index.search(queries[0], k=1, method="exact")[0][0].id
    # replace the best document with the vectors of another one: its score changes
    other = docs.select([150])
    index.add([target], other)
    assert len(index) == 100 and target in index
    new_score = index.score(queries[0], [target])[0].score
    assert not math.isclose(new_score, index.score(queries[0], [doc_ids[1]])[0].score)
    assert index.stats()["tombstones"] == 1
    # delete
    assert index.delete([target, "never-existed"]) == 1
    assert target not in index and len(index) == 99
    assert all(h.id != target for h in index.search(queries[0], k=100, method="exact")[0])
    assert index.delete([target]) == 0
    # filter
    allowed = set(doc_ids[10:20])
    hits = index.search(queries[:3], k=5, method="exact", allowed_ids=allowed | {"unknown"})
    assert all(len(r) == 5 and {h.id for h in r} <= allowed for r in hits)
    assert index.search(queries[:1], k=5, method="exact", allowed_ids=[]) == [[]]


def test_merge_drops_tombstones_and_keeps_results(corpus, doc_ids, queries):
    docs = corpus.docs
    index = build(docs.select(range(100)), doc_ids[:100], max_segments=100, merge_ratio=0, auto_retrain=False)
    for start in range(100, 200, 25):
        index.add(doc_ids[start : start + 25], docs.select(range(start, start + 25)))
    index.delete(doc_ids[::3])
    before = index.search(queries, k=10, method="exact")
    assert index.stats()["segments"] == 5
    index.merge()
    st = index.stats()
    assert st["segments"] == 1 and st["tombstones"] == 0 and st["documents"] == len(index)
    after = index.search(queries, k=10, method="exact")
    assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]


def test_auto_merge_bounds_segment_count(corpus, doc_ids):
    index = build(corpus.docs.select(range(20)), doc_ids[:20], max_segments=4)
    for i in range(20, 80, 5):
        index.add(doc_ids[i : i + 5], corpus.docs.select(range(i, i + 5)))
    assert index.stats()["segments"] <= 4
    assert sorted(index.ids()) == sorted(doc_ids[:80])


def test_empty_index_returns_empty_results():
    index = MultiVectorIndex.create(None, DIM)
    assert index.search(torch.randn(2, 4, DIM), k=3, method="exact") == [[], []]
    assert len(index) == 0 and index.stats()["documents"] == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"queries": torch.randn(4, DIM + 1)}, "dimension"),
        ({"queries": torch.full((4, DIM), float("nan"))}, "NaN"),
        ({"k": 0}, "positive"),
        ({"k": -3}, "positive"),
        ({"k": 10**9}, "larger than the maximum"),
        ({"method": "bogus"}, "unknown search method"),
        ({"method": "exact", "params": {"ncells": 2}}, "unknown parameter"),
        ({"queries": torch.randn(2, 3, 4, DIM)}, "shape"),
        ({"allowed_ids": "doc-1"}, "sequence of strings"),
    ],
)
def test_search_input_errors(built, kwargs, match):
    args = {"queries": torch.randn(4, DIM), "k": 5, "method": "exact", **kwargs}
    with pytest.raises(ValueError, match=match):
        built.search(**args)


def test_add_input_errors(corpus):
    index = MultiVectorIndex.create(None, DIM)
    docs = corpus.docs.select(range(3))
    with pytest.raises(ValueError, match="3 documents"):
        index.add(["a", "b"], docs)
    with pytest.raises(ValueError, match="more than once"):
        index.add(["a", "b", "a"], docs)
    with pytest.raises(ValueError, match="dimension"):
        index.add(
            ["a"],
            PackedDocuments(torch.randn(4, DIM + 8), torch.zeros(4, dtype=torch.int32), torch.tensor([4])),
        )
    bad = docs.vectors.clone()
    bad[int(docs.offsets[1]), 0] = float("nan")
    with pytest.raises(ValueError, match="'b' has NaN"):
        index.add(["a", "b", "c"], PackedDocuments(bad, docs.token_ids, docs.lengths))
    with pytest.raises(ValueError, match="non-empty"):
        index.add(["a", "", "c"], docs)
    with pytest.raises(ValueError, match="nbits"):
        MultiVectorIndex.create(None, DIM, nbits=3)
    with pytest.raises(ValueError, match="unknown index settings"):
        MultiVectorIndex.create(None, DIM, bogus=1)
    assert len(index) == 0


def test_documents_without_vectors(corpus, doc_ids, queries):
    docs = corpus.docs.select([0, 1])
    empty = PackedDocuments(docs.vectors[:0], docs.token_ids[:0], torch.tensor([0]))
    index = build(docs, doc_ids[:2], keep_vectors=True)
    index.add(["empty"], empty)  # a segment holding no vectors at all
    index.add(["also-empty", "x"], PackedDocuments.concat([empty, corpus.docs.select([2])]))
    assert len(index) == 5
    scores = {h.id: h.score for h in index.score(queries[0], ["empty", "also-empty", doc_ids[0]])}
    assert scores["empty"] == 0.0 and scores["also-empty"] == 0.0
    for method in ("exact", "plaid", "xtr"):
        hits = index.search(queries[0], k=5, method=method)[0]
        assert doc_ids[0] in {h.id for h in hits}
    index.merge()
    assert len(index) == 5 and index.score(queries[0], ["empty"])[0].score == 0.0
