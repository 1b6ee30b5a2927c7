"""ColBERT-PRF (Wang et al., 2021): pseudo-relevance feedback with expansion embeddings.

First pass with PLAID; the token vectors of the top ``fb_docs`` documents are clustered with k-means
into ``fb_k`` centroids; each centroid is mapped to the token id most frequent among its 10 nearest
index vectors; IDF = log((N+1)/(df+1)) comes from the index's own token statistics; the ``fb_embs``
centroids of highest IDF are appended to the query with weight ``beta`` * IDF; then the first-pass
documents (the top ``rerank_depth``) are reranked (``prf_mode="rerank"``) or PLAID runs again with
the expanded query (``prf_mode="retrieve"``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tessera.index import plaid
from tessera.index.exact import score_few, topk
from tessera.index.snapshot import Snapshot
from tessera.index.xtr import retrieve

PARAMS = {
    "fb_docs": int,
    "fb_k": int,
    "fb_embs": int,
    "beta": float,
    "prf_mode": str,
    "neighbours": int,
    "rerank_depth": int,
    **plaid.PARAMS,
}
DEFAULTS = {
    "fb_docs": 3,
    "fb_k": 24,
    "fb_embs": 10,
    "beta": 1.0,
    "prf_mode": "rerank",
    "neighbours": 10,
    "rerank_depth": 100,
}
MODES = ("rerank", "retrieve")


def token_idf(snap: Snapshot) -> torch.Tensor:
    """IDF of every token id over the live documents, log((N+1)/(df+1)); cached per snapshot."""
    if "idf" not in snap.cache:
        n_live = len(snap.locations)
        vocab = max((int(s.token_ids.max()) + 1 for s in snap.segments if s.n_vectors), default=0)
        vocab = max(vocab, 1)
        df = torch.zeros(max(vocab, 1), dtype=torch.int64)
        for seg, alive in zip(snap.segments, snap.alive, strict=True):
            doc = torch.repeat_interleave(torch.arange(seg.n_docs), seg.lengths.cpu())
            tid = seg.token_ids.cpu().long()
            ok = (tid >= 0) & alive[doc]
            pairs = torch.unique(doc[ok] * df.numel() + tid[ok])
            df += torch.bincount(pairs % df.numel(), minlength=df.numel())
        snap.cache["idf"] = torch.log((n_live + 1) / (df.double() + 1)).float()
    return snap.cache["idf"]


def expansion(
    snap: Snapshot, fb_vectors: torch.Tensor, p: dict, stats: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """(expansion embeddings [e, dim], their weights beta*IDF [e]) from feedback token vectors."""
    import faiss

    n = fb_vectors.shape[0]
    k = min(p["fb_k"], n)
    if k == 0:
        return fb_vectors[:0], fb_vectors.new_zeros(0)
    km = faiss.Kmeans(fb_vectors.shape[1], k, niter=20, seed=0, verbose=False, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(fb_vectors.float().cpu().numpy()))
    cents = torch.from_numpy(km.centroids.copy()).to(fb_vectors.device)
    # the token id most frequent among each centroid's nearest index vectors: those of its 4 nearest
    # cells (as ColBERT-PRF asks its ANN index), by the stored originals where the index keeps them
    S = cents @ snap.codec.centroids.T
    tok, _, sim, tids = retrieve(snap, cents, S, 4, snap.alive_all, {}, with_token_ids=True, exact_tokens=True)
    idf = token_idf(snap).to(cents.device)
    weights = torch.zeros(k, device=cents.device)
    for c in range(k):  # k is tiny (24)
        sel = (tok == c).nonzero().flatten()
        if sel.numel() == 0:
            continue
        near = sel[sim[sel].topk(min(p["neighbours"], sel.numel())).indices]
        ids = tids[near].long()
        ids = ids[ids >= 0]
        if ids.numel():
            mode = int(torch.mode(ids).values)
            weights[c] = idf[mode] if mode < idf.numel() else math.log(len(snap.locations) + 1)
    order = weights.topk(min(p["fb_embs"], k)).indices
    order = order[weights[order] > 0]
    stats["expansion_idf"] = stats.get("expansion_idf", []) + [weights[order].tolist()]
    return cents[order], p["beta"] * weights[order]


def _add_work(stats: dict, more: dict) -> None:
    for key, value in more.items():
        if isinstance(value, int):
            stats[key] = stats.get(key, 0) + value


def search(
    snap: Snapshot,
    queries: torch.Tensor,
    k: int,
    params: dict,
    mask: torch.Tensor,
    query_weights: torch.Tensor | None = None,
    stats: dict | None = None,
):
    p = {**DEFAULTS, **params}
    if p["prf_mode"] not in MODES:
        raise ValueError(f"prf_mode must be one of {', '.join(MODES)}, got {p['prf_mode']!r}")
    stats = stats if stats is not None else {}
    stats["params"] = p
    plaid_params = {name: p[name] for name in plaid.PARAMS if name in p}
    nq, lq, _ = queries.shape
    out_s = torch.full((nq, k), float("-inf"))
    out_i = torch.full((nq, k), -1, dtype=torch.int64)
    first_k = max(k, p["fb_docs"], p["rerank_depth"] if p["prf_mode"] == "rerank" else 0)
    for q in range(nq):
        w0 = query_weights[q] if query_weights is not None else torch.ones(lq)
        w0 = w0.to(queries.device)
        first_stats: dict = {}
        _, first = plaid.search(snap, queries[q : q + 1], first_k, plaid_params, mask, w0[None], first_stats)
        _add_work(stats, first_stats)
        first = first[0][first[0] >= 0]
        if first.numel() == 0:
            continue
        fb = first[: p["fb_docs"]]
        seg_of, local = snap.locate(fb)
        vecs = torch.cat(
            [
                snap.segments[s].decompress(snap.codec, local[seg_of == s])[0]
                for s in torch.unique(seg_of).tolist()
            ]
        )
        emb, ew = expansion(snap, vecs, p, stats)
        q2 = torch.cat([queries[q], emb.to(queries.device)])
        w2 = torch.cat([w0, ew.to(queries.device)])
        if p["prf_mode"] == "rerank":
            scores = score_few(snap, q2, first, w2)
            stats["dot_products"] = stats.get("dot_products", 0) + int(
                q2.shape[0] * snap.lengths_all[first].sum()
            )
            s, i = topk(scores[None].cpu(), first.cpu(), k)
        else:
            again: dict = {}
            s, i = plaid.search(snap, q2[None], k, plaid_params, mask, w2[None], again)
            _add_work(stats, again)
        out_s[q], out_i[q] = s[0], i[0]
    return out_s, out_i
