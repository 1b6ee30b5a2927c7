"""MultiVectorIndex.rerank: the second stage of two-stage searches (per-query candidate ids)."""

from __future__ import annotations

import pytest
import torch
from index_helpers import build

from tessera.scoring import maxsim_scores


def test_rerank_is_exact_maxsim_over_each_querys_candidates(corpus, doc_ids, queries):
    index = build(corpus.docs, doc_ids, keep_vectors=True)
    cands = [doc_ids[i * 7 : i * 7 + 40] for i in range(3)]
    out = index.rerank(queries[:3], cands, k=10)
    exact = maxsim_scores(queries[:3], corpus.docs)
    for row, (hits, ids) in enumerate(zip(out, cands, strict=True)):
        cols = torch.tensor([doc_ids.index(x) for x in ids])
        best = exact[row, cols].topk(10)
        assert [h.id for h in hits] == [ids[j] for j in best.indices.tolist()]
        assert [h.score for h in hits] == pytest.approx(best.values.tolist(), abs=2e-3)  # fp16 originals


def test_rerank_equals_score_and_skips_unknown_or_deleted_ids(corpus, doc_ids, queries):
    index = build(corpus.docs, doc_ids)
    ids = doc_ids[:30]
    index.delete([ids[3]])
    out = index.rerank(queries[0], [ids + ["never-added", ids[0]]])
    assert [(h.id, h.score) for h in out[0]] == [(h.id, h.score) for h in index.score(queries[0], ids[:3] + ids[4:])]
    assert index.rerank(queries[:2], [[], ["never-added"]]) == [[], []]


def test_rerank_input_errors(built, queries, doc_ids):
    with pytest.raises(ValueError, match="2 queries but 1 candidate lists"):
        built.rerank(queries[:2], [doc_ids[:3]])
    with pytest.raises(ValueError, match="single string"):
        built.rerank(queries[:1], ["doc-1"])
    with pytest.raises(ValueError, match="k must be positive"):
        built.rerank(queries[:1], [doc_ids[:3]], k=0)
