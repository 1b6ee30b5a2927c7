"""Exact MaxSim (late interaction) scoring, chunked so memory stays bounded for any corpus size.

score(q, d) = sum over query tokens i of w_i * max over document tokens j of <q_i, d_j>.
This is the ground truth every approximate search method is measured against.
"""

from __future__ import annotations

import torch

from tessera.packed import PackedDocuments

# Largest similarity block materialised at once (floats): ~128 MB in fp32.
_BLOCK_FLOATS = 32 * 1024 * 1024


def _check_queries(queries: torch.Tensor, dim: int) -> torch.Tensor:
    if queries.ndim == 2:
        queries = queries[None]
    if queries.ndim != 3:
        raise ValueError(f"queries must be [n, tokens, dim], got shape {tuple(queries.shape)}")
    if queries.shape[-1] != dim:
        raise ValueError(f"query dimension {queries.shape[-1]} does not match document dimension {dim}")
    return queries.float()


def maxsim_padded(
    queries: torch.Tensor, docs: torch.Tensor, doc_mask: torch.Tensor, query_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """MaxSim between [nq, Lq, d] queries and padded [nd, Ld, d] documents -> [nq, nd]."""
    nq, lq, d = queries.shape
    nd, ld, _ = docs.shape
    if ld == 0:  # every document in the block is empty: they all score 0
        return queries.new_zeros(nq, nd)
    sim = (queries.reshape(nq * lq, d) @ docs.reshape(nd * ld, d).T).view(nq, lq, nd, ld)
    sim = sim.masked_fill(~doc_mask.view(1, 1, nd, ld), float("-inf"))
    best = sim.max(dim=-1).values  # [nq, lq, nd]
    best = torch.nan_to_num(best, neginf=0.0)  # documents with no vectors score 0
    if query_weights is not None:
        best = best * query_weights.view(nq, lq, 1)
    return best.sum(dim=1)


def maxsim_scores(
    queries: torch.Tensor,
    docs: PackedDocuments,
    query_weights: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Full [nq, N] score matrix; memory is bounded by chunking over queries and documents."""
    scores = torch.empty(0)
    for start, stop, block in _iter_blocks(queries, docs, query_weights, device):
        if scores.numel() == 0:
            scores = torch.empty(block.shape[0], len(docs))
        scores[:, start:stop] = block.cpu()
    if len(docs) == 0:
        return torch.empty(_check_queries(queries, docs.dim).shape[0], 0)
    return scores


def maxsim_topk(
    queries: torch.Tensor,
    docs: PackedDocuments,
    k: int,
    query_weights: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (scores, document indices) per query over the whole collection, keeping only k per query."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    k = min(k, len(docs))
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start, stop, block in _iter_blocks(queries, docs, query_weights, device):
        block = block.cpu()
        idx = torch.arange(start, stop).expand(block.shape[0], -1)
        if best_s is None:
            cand_s, cand_i = block, idx
        else:
            cand_s, cand_i = torch.cat([best_s, block], 1), torch.cat([best_i, idx], 1)
        top = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
        best_s, best_i = top.values, cand_i.gather(1, top.indices)
    if best_s is None:
        nq = _check_queries(queries, docs.dim).shape[0]
        return torch.empty(nq, 0), torch.empty(nq, 0, dtype=torch.long)
    return best_s, best_i


def _iter_blocks(queries, docs: PackedDocuments, query_weights, device):
    q = _check_queries(queries, docs.dim)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    q = q.to(dev)
    w = query_weights.float().to(dev) if query_weights is not None else None
    if w is not None and w.ndim == 1:
        w = w[None]
    nq, lq, _ = q.shape
    if w is not None and tuple(w.shape) != (nq, lq):
        raise ValueError(f"query_weights must have shape {(nq, lq)} to match the queries, got {tuple(w.shape)}")
    n = len(docs)
    if n == 0:
        return
    lmax = int(docs.lengths.max())
    q_block = max(1, min(nq, _BLOCK_FLOATS // max(1, lq * lmax * 64)))
    d_block = max(1, _BLOCK_FLOATS // max(1, q_block * lq * lmax))
    for dstart in range(0, n, d_block):
        dstop = min(n, dstart + d_block)
        dvec, dmask = docs.padded(dstart, dstop)
        dvec, dmask = dvec.to(dev), dmask.to(dev)
        parts = []
        for qstart in range(0, nq, q_block):
            qs = q[qstart : qstart + q_block]
            ws = w[qstart : qstart + q_block] if w is not None else None
            parts.append(maxsim_padded(qs, dvec, dmask, ws))
        yield dstart, dstop, torch.cat(parts, 0)
