"""Shared synthetic data for the index tests (small, clustered, built once per session)."""

from __future__ import annotations

import pytest
import torch
from index_helpers import DIM, build

from tessera.index.synthetic import make_corpus, make_queries
from tessera.scoring import maxsim_topk


@pytest.fixture(scope="session")
def corpus():
    torch.set_num_threads(1)
    return make_corpus(n_docs=400, dim=DIM, mean_len=30, vocab=1500, topics=30, seed=0)


@pytest.fixture(scope="session")
def queries(corpus):
    return make_queries(corpus, n=24, length=16, seed=1)[0]


@pytest.fixture(scope="session")
def doc_ids(corpus):
    return [f"doc-{i}" for i in range(len(corpus.docs))]


@pytest.fixture(scope="session")
def truth(corpus, queries):
    """Exact top-100 on the original (uncompressed) vectors: [nq] lists of doc ids."""
    _, idx = maxsim_topk(queries, corpus.docs, 100)
    return [[f"doc-{i}" for i in row] for row in idx.tolist()]


@pytest.fixture(scope="session")
def built(corpus, doc_ids):
    """A read-only in-memory index over the whole corpus (tests must not modify it)."""
    return build(corpus.docs, doc_ids)
