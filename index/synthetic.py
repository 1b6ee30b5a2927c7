"""Clustered synthetic token vectors with the structure of real multi-vector corpora.

A vocabulary of random unit "token type" embeddings; topics prefer a subset of the vocabulary; a
document is a bag of token types drawn mostly from its topic, each vector its type's embedding plus
noise (normalised). Queries are noisy token types of a target document, so MaxSim rankings have the
shape of real ones (a few strong matches, a long tail). Used by tests and ``tessera bench search``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tessera.packed import PackedDocuments


@dataclass
class SyntheticCorpus:
    docs: PackedDocuments
    token_embeddings: torch.Tensor  # [vocab, dim]
    topics: torch.Tensor  # [n_docs] topic of each document


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def make_corpus(
    n_docs: int = 500,
    dim: int = 64,
    mean_len: int = 40,
    vocab: int = 2000,
    topics: int = 40,
    words_per_topic: int = 60,
    noise: float = 0.5,
    seed: int = 0,
) -> SyntheticCorpus:
    g = torch.Generator().manual_seed(seed)
    emb = _unit(torch.randn(vocab, dim, generator=g))
    topic_words = torch.randint(0, vocab, (topics, words_per_topic), generator=g)
    doc_topic = torch.randint(0, topics, (n_docs,), generator=g)
    lengths = torch.randint(max(1, mean_len // 2), mean_len * 3 // 2 + 1, (n_docs,), generator=g)
    total = int(lengths.sum())
    doc_of = torch.repeat_interleave(torch.arange(n_docs), lengths)
    from_topic = torch.rand(total, generator=g) < 0.7
    topic_tok = topic_words[doc_topic[doc_of], torch.randint(0, words_per_topic, (total,), generator=g)]
    # Zipf-like background vocabulary
    zipf = 1.0 / torch.arange(1, vocab + 1).float()
    background = (
        torch.multinomial(zipf, total, replacement=True, generator=g)
        if total
        else torch.empty(0, dtype=torch.long)
    )
    tokens = torch.where(from_topic, topic_tok, background)
    vectors = torch.empty(total, dim, dtype=torch.float16)
    chunk = 1 << 20
    for i in range(0, total, chunk):
        t = tokens[i : i + chunk]
        vectors[i : i + chunk] = _unit(
            emb[t] + noise * _unit(torch.randn(t.shape[0], dim, generator=g))
        ).half()
    docs = PackedDocuments(vectors, tokens.to(torch.int32), lengths.to(torch.int64))
    return SyntheticCorpus(docs, emb, doc_topic)


def make_queries(
    corpus: SyntheticCorpus, n: int = 20, length: int = 32, noise: float = 0.7, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, length, dim] float32 queries, [n] index of the document each was drawn from)."""
    g = torch.Generator().manual_seed(seed)
    docs = corpus.docs
    targets = torch.randint(0, len(docs), (n,), generator=g)
    off = docs.offsets
    out = torch.empty(n, length, docs.dim)
    for r, d in enumerate(targets.tolist()):
        toks = docs.token_ids[off[d] : off[d + 1]].long()
        pick = toks[torch.randint(0, toks.numel(), (length,), generator=g)]
        out[r] = _unit(
            corpus.token_embeddings[pick] + noise * _unit(torch.randn(length, docs.dim, generator=g))
        )
    return out, targets
