"""ColBERT-PRF: token statistics, expansion embeddings and both modes."""

from __future__ import annotations

import math

import pytest
import torch
from index_helpers import build

from tessera.index import prf


def test_token_idf_matches_brute_force_and_ignores_deleted(corpus, doc_ids):
    docs = corpus.docs.select(range(60))
    index = build(docs, doc_ids[:60])
    index.delete(doc_ids[:10])
    idf = prf.token_idf(index.snapshot)
    live = range(10, 60)
    off = docs.offsets
    df: dict[int, int] = {}
    for d in live:
        for t in set(docs.token_ids[off[d] : off[d + 1]].tolist()):
            df[t] = df.get(t, 0) + 1
    for t, count in list(df.items())[:50]:
        assert idf[t].item() == pytest.approx(math.log((50 + 1) / (count + 1)), rel=1e-5)
    unseen = next(t for t in range(idf.numel()) if t not in df)
    assert idf[unseen].item() == pytest.approx(math.log(51), rel=1e-5)


def _topic_precision(corpus, hits, targets):
    topics = corpus.topics
    return sum(
        int(topics[int(h.id.split("-")[1])] == topics[int(t)])
        for row, t in zip(hits, targets, strict=True)
        for h in row
    ) / sum(len(r) for r in hits)


def test_prf_rerank_and_retrieve(built, corpus):
    from tessera.index.synthetic import make_queries

    queries, targets = make_queries(corpus, n=16, length=16, seed=5)
    first = built.search(queries, k=20, method="plaid")
    rerank, stats = built.search_with_stats(queries, k=10, method="prf", params={"rerank_depth": 20})
    # rerank reorders the first-pass set only
    assert all({h.id for h in r} <= {h.id for h in f} for r, f in zip(rerank, first, strict=True))
    assert len(stats["expansion_idf"]) == len(queries)
    assert all(0 < len(w) <= 10 for w in stats["expansion_idf"])
    assert all(w == sorted(w, reverse=True) for w in stats["expansion_idf"])
    retrieve = built.search(queries, k=10, method="prf", params={"prf_mode": "retrieve"})
    base = built.search(queries, k=10, method="plaid")
    # expansion terms come from the target's topic, so retrieval with them finds more same-topic documents
    assert _topic_precision(corpus, retrieve, targets) > _topic_precision(corpus, base, targets)


def test_prf_with_zero_beta_is_the_exact_first_pass(built, queries):
    hits = built.search(queries[0], k=10, method="prf", params={"beta": 0.0, "rerank_depth": 10})[0]
    exact = built.score(queries[0], [h.id for h in hits])
    assert [h.id for h in hits] == [h.id for h in exact]
    assert [h.score for h in hits] == pytest.approx([h.score for h in exact], rel=1e-5)


def test_prf_rejects_bad_mode(built, queries):
    with pytest.raises(ValueError, match="prf_mode"):
        built.search(queries[0], k=10, method="prf", params={"prf_mode": "expand"})
    with pytest.raises(ValueError, match="positive int"):
        built.search(queries[0], k=10, method="prf", params={"fb_docs": 0})
    assert torch.is_tensor(prf.token_idf(built.snapshot))


def test_expansion_maps_each_centroid_to_its_neighbours_most_frequent_token(corpus, doc_ids):
    """Against a brute-force reference: with 4 centroids the 4-cell probe reaches every stored vector,
    so each feedback centroid's 10 nearest index vectors are exact."""
    import faiss

    assert {k: prf.DEFAULTS[k] for k in ("fb_docs", "fb_k", "fb_embs", "beta", "neighbours")} == {
        "fb_docs": 3, "fb_k": 24, "fb_embs": 10, "beta": 1.0, "neighbours": 10}  # the issue's defaults
    docs = corpus.docs.select(range(80))
    index = build(docs, doc_ids[:80], keep_vectors=True, ncentroids=4)
    snap = index.snapshot
    fb = docs.select([0, 1, 2]).vectors.float()
    p = {**prf.DEFAULTS, "beta": 0.5}
    emb, weights = prf.expansion(snap, fb, p, {})
    km = faiss.Kmeans(fb.shape[1], 24, niter=20, seed=0, verbose=False, min_points_per_centroid=1)
    km.train(fb.numpy())
    idf = prf.token_idf(snap)
    vectors, tokens = docs.vectors.float(), docs.token_ids.tolist()
    expected = []
    for c in torch.from_numpy(km.centroids):
        near = (vectors @ c).topk(10).indices.tolist()
        counts: dict[int, int] = {}
        for i in near:
            counts[tokens[i]] = counts.get(tokens[i], 0) + 1
        top = max(counts.values())
        token = min(t for t, n in counts.items() if n == top)  # ties: the smallest id, as torch.mode
        expected.append((float(idf[token]), c))
    assert len(emb) == 10
    best = sorted((w for w, _ in expected), reverse=True)[:10]  # the 10 highest IDFs (ties: any of them)
    assert sorted(weights.tolist(), reverse=True) == pytest.approx([0.5 * w for w in best], rel=1e-5)
    cents = torch.stack([c for _, c in expected])
    for row, weight in zip(emb, weights.tolist(), strict=True):  # each is a centroid, weighted beta * its IDF
        dist, j = torch.cdist(row[None], cents)[0].min(0)
        assert dist < 1e-4 and weight == pytest.approx(0.5 * expected[int(j)][0], rel=1e-5)
