"""XTR-style search (Lee et al., 2023): score documents from retrieved tokens only.

Each query token probes its ``nprobe`` nearest centroids and scores the vectors stored there (one
dot product per probed vector and query token): with their stored originals when the index keeps
them (``exact_tokens``, the default), otherwise by asymmetric distance computation (<q, centroid>
from the centroid scores, <q, residual> from a per-query-token lookup table over the packed residual
bytes). Only the probed vectors are touched and nothing (least of all whole documents) is
decompressed; each query token keeps its top ``k_prime`` tokens.
A document's score sums, over query tokens, the best similarity among its retrieved tokens, or,
when the token retrieved none of them, that token's
missing-similarity estimate: the lowest similarity it retrieved (its k'-th best).
"""

from __future__ import annotations

import torch

from tessera.index.exact import topk
from tessera.index.kernels import ranges, take
from tessera.index.plaid import centroid_scores
from tessera.index.snapshot import Snapshot

PARAMS = {"nprobe": int, "k_prime": int, "exact_tokens": bool}


def defaults(k: int) -> dict:
    # nprobe 9 at k<=10: the most cells whose scoring stays 10x below PLAID's on SciFact (benchmarks/README.md)
    return {"nprobe": 9 if k <= 10 else 16, "k_prime": max(256, 4 * k), "exact_tokens": True}


def exact_scores(seg, q: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """<q_tok, stored original> of vectors ``pos`` (grouped by query token ``tok``, non-decreasing):
    one matrix-vector product per query token."""
    out = torch.empty(pos.numel(), device=q.device)
    counts = torch.bincount(tok, minlength=q.shape[0]).tolist()
    start = 0
    for i, n in enumerate(counts):
        if n:
            v = take(seg.vectors, pos[start : start + n].to(seg.device)).to(q.device).float()
            out[start : start + n] = v @ q[i]
        start += n
    return out


def residual_tables(snap: Snapshot, q: torch.Tensor) -> torch.Tensor:
    """[m * B * 256] flat lookup tables: entry (i, j, b) = <q_i, residual part coded by byte j = b>."""
    codec = snap.codec
    lut = codec._lut.view(codec.bytes_per_vector, 256, codec.per_byte)
    qv = q.view(q.shape[0], codec.bytes_per_vector, 1, codec.per_byte)
    return (lut[None] * qv).sum(-1).reshape(-1).contiguous()


def residual_scores(snap: Snapshot, lut: torch.Tensor, seg, tok: torch.Tensor, pos: torch.Tensor):
    """<q_tok, residual> of stored vectors ``pos`` for query tokens ``tok`` (one per entry)."""
    codec = snap.codec
    nb = codec.bytes_per_vector
    packed = take(seg.residuals, pos).to(lut.device)
    base = (tok.to(torch.int32) * (nb * 256))[:, None] + codec._byte_base[None, :]
    return take(lut, (packed.to(torch.int32) + base).view(-1)).view(-1, nb).sum(1)


def retrieve(
    snap: Snapshot,
    q: torch.Tensor,
    S: torch.Tensor,
    nprobe: int,
    mask: torch.Tensor,
    stats: dict,
    with_token_ids: bool = False,
    exact_tokens: bool = False,
):
    """(query token index, global document, similarity[, token id]) of every probed vector of a live
    document; ``q`` [m, dim] are the probing vectors and ``S`` [m, C] their centroid scores. The
    similarity comes from the codes (centroid score + residual lookup tables), or with
    ``exact_tokens`` from the stored originals of segments that keep them."""
    lq = q.shape[0]
    dev = q.device
    probes = S.topk(min(nprobe, S.shape[1]), dim=1).indices  # [Lq, nprobe]
    tok_of_pair = torch.arange(lq, device=dev).repeat_interleave(probes.shape[1])
    cells = probes.flatten()
    pair_scores = S.gather(1, probes).flatten()
    bases = snap.bases.tolist()
    lut = residual_tables(snap, q)
    toks, docs, sims, tids = [], [], [], []
    for s, seg in enumerate(snap.segments):
        voff, order, order_docs = seg.vector_ivf(snap.codec.ncentroids)
        voff = voff.to(dev)
        lens = voff[cells + 1] - voff[cells]
        idx = ranges(voff[cells], lens)  # into `order`, one entry per (query token, probed vector)
        if idx.numel() == 0:
            continue
        pos = take(order, idx)
        doc = take(order_docs, idx).long()
        tok = tok_of_pair.repeat_interleave(lens, output_size=idx.numel())
        cent = pair_scores.repeat_interleave(lens, output_size=idx.numel())  # <q, centroid>
        live = mask[bases[s] : bases[s + 1]].to(dev)[doc]
        pos, tok, doc, cent = pos[live], tok[live], doc[live], cent[live]
        if exact_tokens and seg.vectors is not None:
            sim = exact_scores(seg, q, tok, pos)
        else:
            sim = cent + residual_scores(snap, lut, seg, tok, pos)
        stats["scored_vectors"] = stats.get("scored_vectors", 0) + int(sim.numel())
        stats["dot_products"] = stats.get("dot_products", 0) + int(sim.numel())
        toks.append(tok)
        docs.append(doc + bases[s])
        sims.append(sim)
        if with_token_ids:
            tids.append(take(seg.token_ids, pos).to(dev))
    if not toks:
        e = torch.empty(0, device=dev)
        out = (e.long(), e.long(), e)
        return (*out, e.int()) if with_token_ids else out
    out = (torch.cat(toks), torch.cat(docs), torch.cat(sims))
    return (*out, torch.cat(tids)) if with_token_ids else out


def score_query(snap, q, S, p, mask, weights, stats):
    """(XTR scores, global documents) of every document that had a token retrieved."""
    lq = q.shape[0]
    tok, doc, sim = retrieve(snap, q, S, p["nprobe"], mask, stats, exact_tokens=p["exact_tokens"])
    if tok.numel() == 0:
        return sim, doc
    # top k' per query token: lay each token's entries out in one row of a padded matrix, then topk
    if tok.numel() > 1 and bool((tok[1:] < tok[:-1]).any()):  # several segments: group by token
        order = torch.argsort(tok, stable=True)
        tok, doc, sim = tok[order], doc[order], sim[order]
    counts = torch.bincount(tok, minlength=lq)
    starts = torch.cumsum(counts, 0) - counts
    width = int(counts.max())
    grid = torch.full((lq, width), float("-inf"), device=sim.device)
    grid[tok, torch.arange(tok.numel(), device=tok.device) - starts[tok]] = sim
    top = grid.topk(min(p["k_prime"], width), dim=1)
    kept = counts.clamp_max(top.values.shape[1])
    # missing-similarity estimate: the lowest similarity each token kept (its k'-th; 0 if none)
    missing = torch.where(kept > 0, top.values.gather(1, (kept - 1).clamp_min(0)[:, None])[:, 0], 0.0)
    valid = torch.isfinite(top.values)
    entry = (starts[:, None] + top.indices)[valid]
    tok, doc, sim = tok[entry], doc[entry], sim[entry]
    cand, slot = torch.unique(doc, return_inverse=True)
    best = torch.full((cand.numel() * lq,), float("-inf"), device=sim.device)
    best.scatter_reduce_(0, slot * lq + tok, sim, "amax")
    best = best.view(cand.numel(), lq)
    best = torch.where(torch.isinf(best), missing[None, :].expand_as(best), best)
    stats["candidates"] = stats.get("candidates", 0) + int(cand.numel())
    scores = best @ weights if weights is not None else best.sum(1)
    return scores, cand


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
    S_all = centroid_scores(snap, queries)
    nq = queries.shape[0]
    out_s = torch.full((nq, k), float("-inf"))
    out_i = torch.full((nq, k), -1, dtype=torch.int64)
    for q in range(nq):
        w = query_weights[q].to(queries.device) if query_weights is not None else None
        scores, gidx = score_query(snap, queries[q], S_all[q], p, mask, w, stats)
        s, i = topk(scores[None].cpu(), gidx.cpu(), k)
        out_s[q], out_i[q] = s[0], i[0]
    return out_s, out_i
