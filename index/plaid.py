"""PLAID search (Santhanam et al., 2022) over the compressed segments.

Stages, per query:
1. candidate generation: documents in the inverted lists of each query token's top ``ncells`` centroids;
2. centroid interaction with pruning: approximate MaxSim of every candidate from centroid scores only,
   using only centroids whose best query-token score reaches ``centroid_score_threshold``; keep ``ndocs``;
3. centroid interaction without pruning over all their tokens; keep ``ndocs // 4``;
4. exact MaxSim of the survivors on their stored full-precision vectors when the index keeps them
   (``keep_vectors``; ``full_rerank=False`` ignores them) or else on decompressed residuals; keep k.
Everything is vectorised in torch (no per-document Python loops), so it runs on CPU or GPU.
"""

from __future__ import annotations

import torch

from tessera.index.exact import score_few, topk
from tessera.index.kernels import padded_max_sum, padded_positions, ranges, take
from tessera.index.snapshot import Snapshot

_DENSE_LIMIT = 1 << 22  # segments with at most this many documents x query tokens score densely
PARAMS = {
    "ncells": int,
    "centroid_score_threshold": float,
    "ndocs": int,
    "full_rerank": bool,
    "refine": (int, 0),
}


def defaults(k: int) -> dict:
    """PLAID's settings by k."""
    if k <= 10:
        p = {"ncells": 1, "centroid_score_threshold": 0.5, "ndocs": 256}
    elif k <= 100:
        p = {"ncells": 2, "centroid_score_threshold": 0.45, "ndocs": 1024}
    else:
        p = {"ncells": 4, "centroid_score_threshold": 0.4, "ndocs": max(4 * k, 4096)}
    return {**p, "full_rerank": True, "refine": 0}


def centroid_scores(snap: Snapshot, queries: torch.Tensor) -> torch.Tensor:
    """[nq, Lq, C] query-token x centroid similarities."""
    nq, lq, d = queries.shape
    return (queries.reshape(nq * lq, d) @ snap.codec.centroids.T).view(nq, lq, -1)


def approx_candidates(
    snap: Snapshot,
    ST: torch.Tensor,
    mask: torch.Tensor,
    ncells: int,
    threshold: float,
    weights: torch.Tensor | None,
    stats: dict,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1-2 for one query: (approximate scores, global document numbers) of all candidates.
    ``ST`` [C, Lq] holds centroid x query-token scores (this layout keeps the reductions fast)."""
    C, lq = ST.shape
    if ncells == 1:  # each query token's best centroid (amax is much faster than topk/argmax on CPU)
        cells = (ST == ST.amax(0)[None, :]).nonzero()[:, 0].unique()
    else:
        cells = ST.topk(min(ncells, C), dim=0).indices.flatten().unique()
    kept = (ST.amax(1) >= threshold).nonzero().flatten()
    S_kept = ST.index_select(0, kept)  # [|kept|, Lq]
    if weights is not None:
        S_kept = S_kept * weights[None, :]
    bases = snap.bases.tolist()
    out_s, out_g = [], []
    for s, seg in enumerate(snap.segments):
        dev = ST.device
        ivf_off = seg.ivf_offsets.to(dev)
        ivf_docs = seg.ivf_docs.to(dev)
        seg_mask = mask[bases[s] : bases[s + 1]].to(dev)
        cand = torch.zeros(seg.n_docs, dtype=torch.bool, device=dev)
        cand[ivf_docs[ranges(ivf_off[cells], ivf_off[cells + 1] - ivf_off[cells])].long()] = True
        cand &= seg_mask
        n_cand = int(cand.sum())
        stats["candidates"] = stats.get("candidates", 0) + n_cand
        if n_cand == 0:
            continue
        lens = ivf_off[kept + 1] - ivf_off[kept]
        pos = ranges(ivf_off[kept], lens)
        docs = ivf_docs[pos].long()
        owner = torch.repeat_interleave(torch.arange(kept.numel(), device=dev), lens, output_size=pos.numel())
        cand_idx = cand.nonzero().flatten()
        if seg.n_docs * lq > _DENSE_LIMIT:  # large segment: number the candidates compactly first
            compact = torch.full((seg.n_docs,), -1, dtype=torch.int64, device=dev)
            compact[cand_idx] = torch.arange(n_cand, device=dev)
            docs = compact[docs]
            keep = docs >= 0
            docs, owner = docs[keep], owner[keep]
        stats["stage2_pairs"] = stats.get("stage2_pairs", 0) + int(docs.numel())
        # a query token none of whose kept centroids occur in the document contributes 0 (as in PLAID)
        best = torch.zeros(seg.n_docs if seg.n_docs * lq <= _DENSE_LIMIT else n_cand, lq, device=dev)
        if docs.numel():
            best.scatter_reduce_(0, docs[:, None].expand(-1, lq), S_kept.index_select(0, owner), "amax")
        approx = best.sum(1)
        out_s.append(approx[cand_idx] if approx.numel() != n_cand else approx)
        out_g.append(cand_idx + bases[s])
    if not out_s:
        empty = torch.empty(0, device=ST.device)
        return empty, empty.long()
    return torch.cat(out_s), torch.cat(out_g)


def full_centroid_scores(
    snap: Snapshot,
    ST: torch.Tensor,
    gidx: torch.Tensor,
    weights: torch.Tensor | None,
    query: torch.Tensor | None = None,
    refine: int = 0,
    full: bool = True,
    stats: dict | None = None,
) -> torch.Tensor:
    """Stage 3: approximate MaxSim from the centroids of all tokens of the given documents.

    With ``refine`` = t > 0, for every (document, query token) the t document tokens with the best
    centroid scores are re-scored exactly (stored originals, or decompressed residuals of just those
    tokens) and the best of those is used: a lower bound of the exact MaxSim that is far tighter than
    the centroid approximation, at the cost of at most t * Lq dot products per document."""
    out = torch.empty(gidx.numel(), device=ST.device)
    seg_of, local = snap.locate(gidx.cpu())
    lq = ST.shape[1]
    for s in torch.unique(seg_of).tolist():
        sel = (seg_of == s).nonzero().flatten()
        seg = snap.segments[s]
        if refine <= 0 or query is None:
            # the max over a document's tokens only needs its distinct centroids
            offsets, dcodes = seg.doc_codes()
            loc = local[sel].to(seg.device)
            counts = offsets[loc + 1] - offsets[loc]
            upos = padded_positions(offsets[loc], counts)
            codes = take(dcodes, upos.view(-1)).to(ST.device)
            sims = take(ST, codes.long()).view(upos.shape[0], upos.shape[1], lq)
            out[sel.to(ST.device)] = padded_max_sum(sims, counts, weights)
            continue
        pos, lens = seg.padded(local[sel])
        m, width = pos.shape
        codes = take(seg.codes, pos.view(-1)).to(ST.device)
        sims = take(ST, codes.long()).view(m, width, lq)
        best_tok = sims.topk(min(refine, width), dim=1).indices  # [m, t, Lq]
        tok_pos = pos.to(ST.device).gather(1, best_tok.reshape(m, -1)).view(m, -1, lq)
        uniq, inv = torch.unique(tok_pos, return_inverse=True)
        if full and seg.vectors is not None:
            vecs = take(seg.vectors, uniq.to(seg.device)).to(ST.device).float()
        else:
            vecs = snap.codec.decompress(take(seg.codes, uniq), take(seg.residuals, uniq))
        exact = vecs @ query.T  # [u, Lq]
        if stats is not None:
            stats["refine_dot_products"] = stats.get("refine_dot_products", 0) + int(exact.numel())
        picked = exact.view(-1).index_select(0, (inv * lq + torch.arange(lq, device=ST.device)).view(-1))
        best = picked.view(m, -1, lq).amax(1)
        out[sel.to(ST.device)] = best @ weights if weights is not None else best.sum(1)
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
    p = {**defaults(k), **params}
    stats = stats if stats is not None else {}
    stats["params"] = p
    nq = queries.shape[0]
    centroids = snap.codec.centroids
    out_s = torch.full((nq, k), float("-inf"))
    out_i = torch.full((nq, k), -1, dtype=torch.int64)
    for q in range(nq):
        w = query_weights[q].to(queries.device) if query_weights is not None else None
        ST = centroids @ queries[q].T  # [C, Lq]
        approx, gidx = approx_candidates(snap, ST, mask, p["ncells"], p["centroid_score_threshold"], w, stats)
        if gidx.numel() == 0:
            continue
        if gidx.numel() > p["ndocs"]:
            top = approx.topk(p["ndocs"]).indices
            approx, gidx = approx[top], gidx[top]
        n4 = max(k, p["ndocs"] // 4)
        if gidx.numel() > n4:
            full = full_centroid_scores(snap, ST, gidx, w, queries[q], p["refine"], p["full_rerank"], stats)
            gidx = gidx[full.topk(n4).indices]
        gidx = gidx.cpu()
        scores = score_few(snap, queries[q], gidx, w, p["full_rerank"])[None].cpu()
        stats["scored_docs"] = stats.get("scored_docs", 0) + int(gidx.numel())
        stats["dot_products"] = stats.get("dot_products", 0) + int(
            queries.shape[1] * snap.lengths_all[gidx].sum()
        )  # the decompress-and-score stage (stage 4)
        s, i = topk(scores, gidx, k)
        out_s[q], out_i[q] = s[0], i[0]
    return out_s, out_i
