"""Exact MaxSim against a naive per-pair Python loop."""

from __future__ import annotations

import pytest
import torch

import tessera.scoring as scoring
from tessera.packed import PackedDocuments
from tessera.scoring import maxsim_padded, maxsim_scores, maxsim_topk

DIM = 8


def _docs(lengths, seed=0) -> PackedDocuments:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths, dtype=torch.long)
    total = int(lengths.sum())
    vectors = torch.nn.functional.normalize(torch.randn(total, DIM, generator=g), dim=-1).half()
    return PackedDocuments(vectors, torch.randint(0, 100, (total,), generator=g, dtype=torch.int32), lengths)


def _empty(n_docs=0) -> PackedDocuments:
    """n_docs documents without any vector."""
    lengths = torch.zeros(n_docs, dtype=torch.long)
    return PackedDocuments(torch.empty(0, DIM).half(), torch.empty(0, dtype=torch.int32), lengths)


def _queries(n, length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, length, DIM, generator=g), dim=-1)


def _naive(queries, docs, weights=None):
    """score[q][d] = sum_i w_i * max_j <q_i, d_j>, 0 for a document without vectors."""
    out = torch.zeros(queries.shape[0], len(docs), dtype=torch.float64)
    for a in range(queries.shape[0]):
        for b in range(len(docs)):
            d = docs.doc(b).double()
            total = 0.0
            for i in range(queries.shape[1]):
                best = max((float(queries[a, i].double() @ d[j]) for j in range(d.shape[0])), default=0.0)
                total += best * (float(weights[a, i]) if weights is not None else 1.0)
            out[a, b] = total
    return out.float()


LENGTHS = [3, 0, 7, 1, 12, 0, 5, 2, 9, 4]
NONEMPTY = [n for n in LENGTHS if n]


@pytest.mark.parametrize("weighted", [False, True])
def test_scores_match_naive_loop(weighted):
    docs, q = _docs(LENGTHS), _queries(4, 6)
    w = torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) if weighted else None
    got = maxsim_scores(q, docs, query_weights=w)
    assert got.shape == (4, len(LENGTHS))
    torch.testing.assert_close(got, _naive(q, docs, w), atol=1e-5, rtol=1e-5)
    assert (got[:, [1, 5]] == 0).all()  # empty documents score 0


def test_single_query_as_2d_tensor():
    docs, q = _docs(LENGTHS), _queries(1, 5)
    torch.testing.assert_close(maxsim_scores(q[0], docs), _naive(q, docs), atol=1e-5, rtol=1e-5)


def test_tiny_blocks_give_identical_results(monkeypatch):
    docs, q = _docs(NONEMPTY), _queries(5, 6)
    w = torch.rand(5, 6, generator=torch.Generator().manual_seed(3))
    full = maxsim_scores(q, docs, query_weights=w)
    top_s, top_i = maxsim_topk(q, docs, 4, query_weights=w)
    calls = []
    original = scoring.maxsim_padded
    monkeypatch.setattr(scoring, "_BLOCK_FLOATS", 40)
    monkeypatch.setattr(scoring, "maxsim_padded", lambda *a: calls.append(a[1].shape[0]) or original(*a))
    chunked = maxsim_scores(q, docs, query_weights=w)
    assert len(calls) == len(NONEMPTY) * 5  # one block per (query, document) pair
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    s, i = maxsim_topk(q, docs, 4, query_weights=w)
    assert torch.equal(i, top_i)
    torch.testing.assert_close(s, top_s, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_topk_matches_sorted_naive_scores(k, monkeypatch):
    monkeypatch.setattr(scoring, "_BLOCK_FLOATS", 200)  # several document blocks to merge
    docs, q = _docs(LENGTHS), _queries(3, 4)
    ref = _naive(q, docs)
    s, i = maxsim_topk(q, docs, k)
    kk = min(k, len(LENGTHS))
    assert s.shape == i.shape == (3, kk)
    for row in range(3):
        order = sorted(range(len(LENGTHS)), key=lambda d: -float(ref[row, d]))[:kk]
        assert i[row].tolist() == order
        torch.testing.assert_close(s[row], ref[row, order], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [0, -1])
def test_non_positive_k_is_an_error(k):
    with pytest.raises(ValueError, match="k must be positive"):
        maxsim_topk(_queries(1, 2), _docs([2, 3]), k)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match document dimension"):
        maxsim_scores(torch.randn(2, 3, DIM + 1), _docs([2, 3]))
    with pytest.raises(ValueError, match="queries must be"):
        maxsim_topk(torch.randn(2, 2, 3, DIM), _docs([2, 3]), 1)


def test_empty_collection():
    empty = _empty()
    assert maxsim_scores(_queries(2, 3), empty).shape == (2, 0)
    s, i = maxsim_topk(_queries(2, 3), empty, 5)
    assert s.shape == i.shape == (2, 0)


def test_maxsim_padded_masks_padding():
    q = _queries(2, 3)
    d = torch.nn.functional.normalize(torch.randn(2, 4, DIM), dim=-1)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    d_with_junk = d.clone()
    d_with_junk[0, 2:] = q[0, 0] * 10  # would win every max if padding were not masked
    flat = torch.cat([d[0, :2], d[1]]).half()
    docs = PackedDocuments(flat, torch.zeros(6, dtype=torch.int32), torch.tensor([2, 4]))
    torch.testing.assert_close(maxsim_padded(q, d_with_junk, mask), _naive(q, docs), atol=2e-3, rtol=0)


def test_collection_of_only_empty_documents_scores_zero():
    docs = _empty(3)
    assert torch.equal(maxsim_scores(_queries(2, 3), docs), torch.zeros(2, 3))


def test_tiny_blocks_with_empty_documents(monkeypatch):
    docs, q = _docs(LENGTHS), _queries(5, 6)
    monkeypatch.setattr(scoring, "_BLOCK_FLOATS", 40)
    torch.testing.assert_close(maxsim_scores(q, docs), _naive(q, docs), atol=1e-5, rtol=1e-5)


def test_single_2d_query_with_1d_weights():
    docs, q = _docs(LENGTHS), _queries(1, 5)
    w = torch.rand(1, 5)
    torch.testing.assert_close(maxsim_scores(q[0], docs, query_weights=w[0]), _naive(q, docs, w),
                               atol=1e-5, rtol=1e-5)
