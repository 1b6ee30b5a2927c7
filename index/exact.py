"""Exact MaxSim over every (allowed) document's stored vectors: the ground truth of the index."""

from __future__ import annotations

import torch
from tessera.index.kernels import padded_max_sum
from tessera.index.snapshot import Snapshot

from tessera.packed import PackedDocuments
from tessera.scoring import maxsim_scores

PARAMS: dict = {}
_CHUNK_VECTORS = 1 << 17


def score_docs(
    snap: Snapshot, queries: torch.Tensor, gidx: torch.Tensor, query_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact MaxSim [nq, len(gidx)] of the given global documents, decompressing in bounded chunks."""
    out = torch.empty(queries.shape[0], gidx.numel())
    if gidx.numel() == 0:
        return out
    seg_of, local = snap.locate(gidx)
    dev = snap.codec.device
    for s in torch.unique(seg_of).tolist():
        sel = (seg_of == s).nonzero().flatten()
        seg = snap.segments[s]
        loc = local[sel]
        lengths = seg.lengths[loc]
        ends = torch.cumsum(lengths, 0)
        start = 0
        while start < loc.numel():
            # documents start..stop hold at most _CHUNK_VECTORS vectors (at least one document)
            budget = (ends[start - 1] if start else 0) + _CHUNK_VECTORS
            stop = max(start + 1, int(torch.searchsorted(ends, budget, right=True)))
            vecs, lens = seg.decompress(snap.codec, loc[start:stop])
            packed = PackedDocuments(vecs, torch.full((vecs.shape[0],), -1, dtype=torch.int32), lens)
            out[:, sel[start:stop]] = maxsim_scores(queries, packed, query_weights, device=dev)
            start = stop
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
        vecs, lens = snap.segments[s].padded_vectors(snap.codec, local[sel], full)
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
