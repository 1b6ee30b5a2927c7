"""XTR-style search (Lee et al., 2023): score documents from retrieved tokens only.

Each query token probes its ``nprobe`` nearest centroids and scores the vectors stored there
(centroid + decoded residual; only the vectors of probed cells are decompressed, never whole
documents); it keeps its top ``k_prime`` tokens. A document's score sums, over query tokens, the best
similarity among its retrieved tokens, or, when the token retrieved none of them, that token's
missing-similarity estimate: the lowest similarity it retrieved (its k'-th best).
"""

from __future__ import annotations

import torch
from tessera.index.exact import topk
from tessera.index.kernels import ranges, take
from tessera.index.plaid import centroid_scores
from tessera.index.snapshot import Snapshot

PARAMS = {"nprobe": int, "k_prime": int}


def defaults(k: int) -> dict:
    return {"nprobe": 8 if k <= 10 else 16, "k_prime": max(256, 4 * k)}


def retrieve(
    snap: Snapshot,
    q: torch.Tensor,
    S: torch.Tensor,
    nprobe: int,
    mask: torch.Tensor,
    stats: dict,
    with_token_ids: bool = False,
):
    """(query token index, global document, similarity[, token id]) of every probed vector of a live
    document; ``q`` [m, dim] are the probing vectors and ``S`` [m, C] their centroid scores."""
    lq = q.shape[0]
    dev = q.device
    probes = S.topk(min(nprobe, S.shape[1]), dim=1).indices  # [Lq, nprobe]
    tok_of_pair = torch.arange(lq, device=dev).repeat_interleave(probes.shape[1])
    cells = probes.flatten()
    bases = snap.bases.tolist()
    toks, docs, sims, tids = [], [], [], []
    for s, seg in enumerate(snap.segments):
        voff, order = seg.vector_ivf(snap.codec.ncentroids)
        voff = voff.to(dev)
        order = order.to(dev)
        lens = voff[cells + 1] - voff[cells]
        idx = ranges(voff[cells], lens)  # into `order`, one entry per (query token, probed vector)
        if idx.numel() == 0:
            continue
        pos = order[idx]
        tok = tok_of_pair.repeat_interleave(lens, output_size=idx.numel())
        doc = seg.doc_of(pos).to(dev)
        live = mask[bases[s] : bases[s + 1]].to(dev)[doc]
        pos, tok, doc = pos[live], tok[live], doc[live]
        # decompress each distinct probed vector once, then one dot product per (token, vector) entry
        uniq, inv = torch.unique(pos, return_inverse=True)
        vecs = snap.codec.decompress(take(seg.codes, uniq), take(seg.residuals, uniq))
        sim = (vecs.index_select(0, inv) * q.index_select(0, tok)).sum(1)
        stats["decompressed_vectors"] = stats.get("decompressed_vectors", 0) + int(uniq.numel())
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
    tok, doc, sim = retrieve(snap, q, S, p["nprobe"], mask, stats)
    if tok.numel() == 0:
        return sim, doc
    # top k' per query token: sort by similarity, then stably by token; rank within the token's run
    order = torch.argsort(sim, descending=True)
    order = order[torch.argsort(tok[order], stable=True)]
    tok, doc, sim = tok[order], doc[order], sim[order]
    counts = torch.bincount(tok, minlength=lq)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(tok.numel(), device=tok.device) - starts[tok]
    # missing-similarity estimate: the lowest similarity each token kept (its k'-th; 0 if none)
    kept = counts.clamp_max(p["k_prime"])
    last = (starts + kept - 1).clamp_min(0).clamp_max(sim.numel() - 1)
    missing = torch.where(kept > 0, sim[last], sim.new_zeros(lq))
    keep = rank < p["k_prime"]
    tok, doc, sim = tok[keep], doc[keep], sim[keep]
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
