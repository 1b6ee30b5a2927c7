"""Exact MaxSim over every (allowed) document's stored vectors: the ground truth of the index."""

from __future__ import annotations

import torch

from tessera.index import kernels
from tessera.index.kernels import filled, padded_max_sum, select_tokens, sum_best
from tessera.index.snapshot import Snapshot
from tessera.scoring import maxsim_padded

PARAMS: dict = {}
_CHUNK_VECTORS = 1 << 16  # padded document vectors loaded at once
_BLOCK_FLOATS = 1 << 24  # similarity entries materialised at once
FUSED_MAX_QUERIES = 4  # up to this many queries are scored one by one by the compiled kernel


def _fused(queries: torch.Tensor) -> bool:
    """Whether the compiled kernel scores these queries (CPU, kernel built; see ``kernels``)."""
    return queries.device.type == "cpu" and kernels.FUSED is not None


def _fused_scores(snap: Snapshot, seg, loc: torch.Tensor, query: torch.Tensor, weights, full: bool) -> torch.Tensor:
    """Exact MaxSim [len(loc)] of one query [Lq, dim] against local documents ``loc`` of ``seg``: one
    pass of the compiled kernel over their vectors (no padding)."""
    pos, rows = select_tokens(seg.offsets, loc, seg.codes, None)
    best = filled(loc.numel(), query.shape[0])
    seg.score_max(snap.codec, pos, rows, query, best, full, trusted=True)
    return sum_best(best, seg.lengths[loc], weights)


def score_docs(
    snap: Snapshot, queries: torch.Tensor, gidx: torch.Tensor, query_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact MaxSim [nq, len(gidx)] of the given global documents, loading them in bounded chunks and
    scoring with ``tessera.scoring.maxsim_padded``, or, for a few queries on CPU, with the compiled
    kernel one query at a time."""
    nq, lq, _ = queries.shape
    out = torch.empty(nq, gidx.numel())
    if gidx.numel() == 0:
        return out
    fused = _fused(queries) and nq <= FUSED_MAX_QUERIES
    seg_of, local = snap.locate(gidx)
    lengths_all = snap.lengths_all[gidx]
    for s in torch.unique(seg_of).tolist():
        sel = (seg_of == s).nonzero().flatten()
        seg = snap.segments[s]
        loc = local[sel]
        lmax = max(1, int(lengths_all[sel].max()))
        per_chunk = max(1, _CHUNK_VECTORS // lmax)
        q_block = max(1, min(nq, _BLOCK_FLOATS // (lq * per_chunk * lmax)))
        for start in range(0, loc.numel(), per_chunk):
            chunk, cols = loc[start : start + per_chunk], sel[start : start + per_chunk]
            if fused:
                for q in range(nq):
                    w = query_weights[q] if query_weights is not None else None
                    out[q, cols] = _fused_scores(snap, seg, chunk, queries[q], w, True)
                continue
            vecs, lens = seg.padded_vectors(snap.codec, chunk)
            mask = torch.arange(vecs.shape[1], device=vecs.device)[None, :] < lens[:, None]
            for q0 in range(0, nq, q_block):
                w = query_weights[q0 : q0 + q_block] if query_weights is not None else None
                block = maxsim_padded(queries[q0 : q0 + q_block], vecs, mask, w)
                out[q0 : q0 + q_block, cols] = block.cpu()
    return out


def score_few(
    snap: Snapshot,
    query: torch.Tensor,
    gidx: torch.Tensor,
    weights: torch.Tensor | None = None,
    full: bool = True,
) -> torch.Tensor:
    """Exact MaxSim [len(gidx)] of ONE query [Lq, dim] against a few documents (all loaded at once)."""
    out = torch.empty(gidx.numel(), device=query.device)
    if gidx.numel() == 0:
        return out
    seg_of, local = snap.locate(gidx.cpu())
    for s in torch.unique(seg_of).tolist():
        sel = (seg_of == s).nonzero().flatten()
        seg = snap.segments[s]
        if _fused(query):
            out[sel] = _fused_scores(snap, seg, local[sel], query, weights, full)
            continue
        vecs, lens = seg.padded_vectors(snap.codec, local[sel], full)
        m, lmax, d = vecs.shape
        sims = (vecs.view(m * lmax, d) @ query.T).view(m, lmax, -1)
        out[sel.to(out.device)] = padded_max_sum(sims, lens, weights)
    return out


def search(
    snap: Snapshot,
    queries: torch.Tensor,
    k: int,
    params: dict,
    mask: torch.Tensor,
    query_weights: torch.Tensor | None = None,
    stats: dict | None = None,
):
    """Top-k (scores, global document numbers) per query; padded with -inf / -1."""
    gidx = mask.nonzero().flatten()
    scores = score_docs(snap, queries, gidx, query_weights)
    if stats is not None:
        stats["scored_docs"] = int(gidx.numel())
        stats["dot_products"] = int(queries.shape[0] * queries.shape[1] * snap.lengths_all[gidx].sum())
    return topk(scores, gidx, k)


def topk(scores: torch.Tensor, gidx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a [nq, n] score matrix over documents ``gidx``, padded to k with (-inf, -1)."""
    nq = scores.shape[0]
    kk = min(k, scores.shape[1])
    out_s = torch.full((nq, k), float("-inf"))
    out_i = torch.full((nq, k), -1, dtype=torch.int64)
    if kk:
        top = scores.topk(kk, dim=1)
        out_s[:, :kk] = top.values
        out_i[:, :kk] = gidx[top.indices]
    return out_s, out_i
