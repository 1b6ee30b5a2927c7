"""Hard-negative mining: from BM25 and from the model being trained."""

from __future__ import annotations

import logging

import torch

from tessera.datasets import Document

log = logging.getLogger(__name__)


def bm25_rankings(corpus: dict[str, Document], queries: dict[str, str], depth: int = 100) -> dict[str, list[str]]:
    """Top-``depth`` document ids per query by BM25 (bm25s, English stemming and stop words)."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    doc_ids = list(corpus)
    tokens = bm25s.tokenize([corpus[d].full_text for d in doc_ids], stopwords="en", stemmer=stemmer,
                            show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    qids = list(queries)
    qtok = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    results, _ = retriever.retrieve(qtok, k=min(depth, len(doc_ids)), show_progress=False, n_threads=1)
    return {qid: [doc_ids[i] for i in row] for qid, row in zip(qids, results.tolist(), strict=False)}


def model_rankings(encoder, corpus: dict[str, Document], queries: dict[str, str], depth: int = 100,
                   batch_size: int = 32) -> dict[str, list[str]]:
    """Top-``depth`` document ids per query by exact MaxSim with the current model."""
    from tessera.scoring import maxsim_topk

    was_training = encoder.model.training
    doc_ids = list(corpus)
    docs = encoder.encode_documents([corpus[d].full_text for d in doc_ids], batch_size=batch_size,
                                    progress=True, desc="mining negatives")
    qids = list(queries)
    q = encoder.encode_queries([queries[x] for x in qids])
    _, idx = maxsim_topk(q, docs, depth, device=encoder.device)
    encoder.model.train(was_training)
    return {qid: [doc_ids[i] for i in row] for qid, row in zip(qids, idx.tolist(), strict=False)}


def negative_pools(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]], skip: int = 0,
                   depth: int = 30) -> dict[str, list[str]]:
    """Per query, the ranked ids in positions [skip, depth) that are not judged relevant."""
    pools = {}
    for qid, ranked in rankings.items():
        positives = {d for d, s in qrels.get(qid, {}).items() if s > 0}
        pools[qid] = [d for d in ranked[skip:depth] if d not in positives]
    return pools


def merge_pools(*pools: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pool in pools:
        for qid, ids in pool.items():
            seen = out.setdefault(qid, [])
            seen.extend(d for d in ids if d not in seen)
    return out


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g
