"""PLAID search (Santhanam et al., 2022) over the compressed segments, with residual-aware pruning.

Stages, per query (``ncells``, ``centroid_score_threshold`` and ``ndocs`` keep PLAID's meaning and its
defaults by k):
1. candidate generation: documents in the inverted lists of each query token's top ``ncells`` centroids;
2. centroid interaction with pruning: only centroids whose best query-token score reaches
   ``centroid_score_threshold`` take part. PLAID scores a candidate from those centroids' scores;
   here the candidate's token vectors that lie in those centroids are scored against the query
   (found through the centroid -> vector inverted lists; stored originals, or decompressed residuals
   for ``full_rerank=False``), so the approximate MaxSim sees residuals and not just centroids: a
   query token none of whose kept vectors occur in the document contributes 0, as in PLAID. Keep
   the top ``ndocs``;
3. refinement of those ``ndocs``: their tokens in centroids scoring at least ``tier_threshold``
   (default ``centroid_score_threshold - 0.2``) are scored too, which makes the approximation a tight
   lower bound of the exact MaxSim; keep the top ``nfinal`` (default ``max(2k, ndocs // 8)``);
4. exact MaxSim of the survivors on their stored full-precision vectors when the index keeps them
   (``keep_vectors``; ``full_rerank=False`` ignores them) or else on decompressed residuals; keep k.
The work counter ``dot_products`` counts the query-token x vector products of stages 2-4 (the
decompress-and-score stages); ``stage2_dot_products`` etc. break it down.
Everything is vectorised (no per-document Python loops): vectors are scored by ``Segment.score_max``,
one pass of the compiled kernel on CPU (``tessera.index.kernels``), torch elsewhere (CPU or GPU).
"""

from __future__ import annotations

import torch

from tessera.index.exact import score_few, topk
from tessera.index.kernels import ranges, take
from tessera.index.snapshot import Snapshot

PARAMS = {
    "ncells": int,
    "centroid_score_threshold": float,
    "ndocs": int,
    "tier_threshold": float,
    "nfinal": int,
    "full_rerank": bool,
}
TIER_GAP = 0.2  # default tier_threshold = centroid_score_threshold - TIER_GAP


def defaults(k: int) -> dict:
    """PLAID's settings by k."""
    if k <= 10:
        p = {"ncells": 1, "centroid_score_threshold": 0.5, "ndocs": 256}
    elif k <= 100:
        p = {"ncells": 2, "centroid_score_threshold": 0.45, "ndocs": 1024}
    else:
        p = {"ncells": 4, "centroid_score_threshold": 0.4, "ndocs": max(4 * k, 4096)}
    return {**p, "full_rerank": True}


QUERY_TOKENS = 32  # the query length PLAID's defaults assume (ColBERT pads queries to 32 tokens)


def resolve(k: int, params: dict, query_vectors: int | None = None) -> dict:
    """Defaults by k, the given parameters, and the derived ones (tier_threshold, nfinal).

    A query of fewer than 32 vectors (a clustered model's, e.g. CRISP's 4 or 16 representatives)
    probes as many cells in all as a 32-token query would: the default ``ncells`` is multiplied by
    ``ceil(32 / query_vectors)``. An explicit ``ncells`` is kept as given.
    """
    p = {**defaults(k), **params}
    if "ncells" not in params and query_vectors and query_vectors < QUERY_TOKENS:
        p["ncells"] *= -(-QUERY_TOKENS // query_vectors)
    p.setdefault("tier_threshold", p["centroid_score_threshold"] - TIER_GAP)
    p.setdefault("nfinal", max(2 * k, p["ndocs"] // 8))
    return p


def centroid_scores(snap: Snapshot, queries: torch.Tensor) -> torch.Tensor:
    """[nq, Lq, C] query-token x centroid similarities."""
    nq, lq, d = queries.shape
    return (queries.reshape(nq * lq, d) @ snap.codec.centroids.T).view(nq, lq, -1)


def _add(stats: dict, key: str, value: int) -> None:
    stats[key] = stats.get(key, 0) + value


def stage2(
    snap: Snapshot,
    query: torch.Tensor,
    ST: torch.Tensor,
    mask: torch.Tensor,
    ncells: int,
    threshold: float,
    full: bool,
    stats: dict,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1-2 for one query: ([n, Lq] per query token the best similarity among each candidate's
    vectors in kept centroids (0 if none), [n] global document numbers of the n candidates).
    ``ST`` [C, Lq] holds centroid x query-token scores."""
    C, lq = ST.shape
    dev = ST.device
    if ncells == 1:  # each query token's best centroid (ST is a view of [Lq, C]: argmax runs along rows)
        cells = ST.argmax(0).unique()
    else:
        cells = ST.topk(min(ncells, C), dim=0).indices.flatten().unique()
    kept = (ST.amax(1) >= threshold).nonzero().flatten()
    bases = snap.bases.tolist()
    out_b, out_g = [], []
    for s, seg in enumerate(snap.segments):
        ivf_off = seg.ivf_offsets.to(dev)
        cand = torch.zeros(seg.n_docs, dtype=torch.bool, device=dev)
        cand[seg.ivf_docs.to(dev)[ranges(ivf_off[cells], ivf_off[cells + 1] - ivf_off[cells])].long()] = True
        cand &= mask[bases[s] : bases[s + 1]].to(dev)
        cand_idx = cand.nonzero().flatten()
        n_cand = cand_idx.numel()
        _add(stats, "candidates", n_cand)
        if n_cand == 0:
            continue
        voff, order, order_docs = seg.vector_ivf(C)
        voff = voff.to(dev)
        idx = ranges(voff[kept], voff[kept + 1] - voff[kept])
        docs = take(order_docs, idx.to(order_docs.device)).to(dev).long()
        inside = cand[docs]
        docs = docs[inside]
        pos = take(order, idx[inside].to(order.device))
        # a query token none of whose kept vectors occur in the document contributes 0 (as in PLAID)
        best = torch.zeros(n_cand, lq, device=dev)
        if pos.numel():
            _add(stats, "stage2_dot_products", int(pos.numel()) * lq)
            compact = torch.full((seg.n_docs,), -1, dtype=torch.int64, device=dev)
            compact[cand_idx] = torch.arange(n_cand, device=dev)
            seg.score_max(snap.codec, pos, compact[docs], query, best, full)
        out_b.append(best)
        out_g.append(cand_idx + bases[s])
    if not out_b:
        return torch.empty(0, lq, device=dev), torch.empty(0, dtype=torch.int64, device=dev)
    return torch.cat(out_b), torch.cat(out_g)


def stage3(
    snap: Snapshot,
    query: torch.Tensor,
    ST: torch.Tensor,
    best: torch.Tensor,
    gidx: torch.Tensor,
    low: float,
    high: float,
    full: bool,
    stats: dict,
) -> torch.Tensor:
    """``best`` [m, Lq] of documents ``gidx`` raised by their tokens whose centroid's best score lies
    in [low, high) (the tokens stage 2 did not see); returns the new [m, Lq]."""
    cmax = ST.amax(1)
    tier = (cmax >= low) & (cmax < high)
    best = best.clone()
    seg_of, local = snap.locate(gidx.cpu())
    for s in torch.unique(seg_of).tolist():
        sel = (seg_of == s).nonzero().flatten()
        seg = snap.segments[s]
        loc = local[sel].to(seg.device)
        lengths = seg.lengths[loc]
        pos = ranges(seg.offsets[loc], lengths)  # document-major
        if pos.numel() == 0:
            continue
        row = torch.repeat_interleave(sel.to(seg.device), lengths, output_size=pos.numel())
        pick = take(tier, take(seg.codes, pos).to(ST.device)).nonzero().flatten()
        if pick.numel() == 0:
            continue
        _add(stats, "stage3_dot_products", int(pick.numel()) * query.shape[0])
        seg.score_max(snap.codec, pos[pick.to(pos.device)], row[pick.to(row.device)].to(ST.device), query, best, full)
    return best


def search(
    snap: Snapshot,
    queries: torch.Tensor,
    k: int,
    params: dict,
    mask: torch.Tensor,
    query_weights: torch.Tensor | None = None,
    stats: dict | None = None,
):
    p = resolve(k, params, queries.shape[1])
    stats = stats if stats is not None else {}
    stats["params"] = p
    nq = queries.shape[0]
    centroids = snap.codec.centroids
    out_s = torch.full((nq, k), float("-inf"))
    out_i = torch.full((nq, k), -1, dtype=torch.int64)
    thr, full = p["centroid_score_threshold"], p["full_rerank"]
    for q in range(nq):
        w = query_weights[q].to(queries.device) if query_weights is not None else None
        query = queries[q]
        ST = (query @ centroids.T).T  # [C, Lq], a view of contiguous [Lq, C] (fast reductions over C)
        best, gidx = stage2(snap, query, ST, mask, p["ncells"], thr, full, stats)
        if gidx.numel() == 0:
            continue
        if gidx.numel() > p["ndocs"]:
            approx = best @ w if w is not None else best.sum(1)
            top = approx.topk(p["ndocs"]).indices
            best, gidx = best[top], gidx[top]
        if gidx.numel() > p["nfinal"]:
            if p["tier_threshold"] < thr:
                best = stage3(snap, query, ST, best, gidx, p["tier_threshold"], thr, full, stats)
            approx = best @ w if w is not None else best.sum(1)
            gidx = gidx[approx.topk(p["nfinal"]).indices]
        gidx = gidx.cpu()
        scores = score_few(snap, query, gidx, w, full)[None].cpu()
        _add(stats, "scored_docs", int(gidx.numel()))
        _add(stats, "stage4_dot_products", int(queries.shape[1] * snap.lengths_all[gidx].sum()))
        s, i = topk(scores, gidx, k)
        out_s[q], out_i[q] = s[0], i[0]
    stats["dot_products"] = sum(stats.get(f"stage{n}_dot_products", 0) for n in (2, 3, 4))
    return out_s, out_i
