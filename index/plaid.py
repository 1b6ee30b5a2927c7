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
4. exact MaxSim of the survivors: their remaining vectors (centroids below the last tier scored) are
   scored and maxed into the per-token maxima of stages 2-3, which are already exact over the vectors
   they saw (the same vectors as stage 4: stored full-precision originals when the index keeps them,
   ``keep_vectors``, unless ``full_rerank=False``; else decompressed residuals); keep k.
With ``bf16`` (the default where ``kernels.bf16_fast``: CPUs with AVX512-BF16) the centroid scores and
stages 2-3 round the query, centroids and vectors to bfloat16 (products summed in float32: half the
instructions there, and the prunings see scores within about 2^-8 relative of the float32 ones), and
stage 4 scores every vector of the survivors again in float32, so the scores returned stay exact;
otherwise every vector of a surviving document is scored once, in float32. The work counter
``dot_products`` counts the query-token x vector products of stages 2-4 (the decompress-and-score
stages); ``stage2_dot_products`` etc. break it down.
Everything is vectorised (no per-document Python loops): the vectors of each stage are selected by
``kernels.select_*``, scored by ``Segment.score_max``, and the survivors of each pruning picked by
``kernels.top_rows``; on CPU all compiled (``tessera.index.kernels``), torch elsewhere (CPU or GPU).
"""

from __future__ import annotations

import torch

from tessera.index import kernels
from tessera.index.exact import topk
from tessera.index.kernels import (
    centroid_max,
    filled,
    rank_map,
    select_candidates,
    select_ivf,
    select_tokens,
    sum_best,
    top_rows,
)
from tessera.index.snapshot import Snapshot

PARAMS = {
    "ncells": int,
    "centroid_score_threshold": float,
    "ndocs": int,
    "ncandidates": int,
    "tier_threshold": float,
    "nfinal": int,
    "full_rerank": bool,
    "bf16": bool,
}
TIER_GAP = 0.2  # default tier_threshold = centroid_score_threshold - TIER_GAP
CANDIDATES_PER_DOC = 4  # default ncandidates = 4 * ndocs


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


def resolve(k: int, params: dict, query_vectors: int | None = None, device: torch.device | str = "cpu") -> dict:
    """Defaults by k, the given parameters, and the derived ones (ncandidates, tier_threshold, nfinal;
    ``bf16`` where it is faster on ``device``, ``kernels.bf16_fast``).

    A query of fewer than 32 vectors (a clustered model's, e.g. CRISP's 4 or 16 representatives)
    probes as many cells in all as a 32-token query would: the default ``ncells`` is multiplied by
    ``ceil(32 / query_vectors)``. An explicit ``ncells`` is kept as given.
    """
    p = {**defaults(k), **params}
    if "ncells" not in params and query_vectors and query_vectors < QUERY_TOKENS:
        p["ncells"] *= -(-QUERY_TOKENS // query_vectors)
    p.setdefault("ncandidates", CANDIDATES_PER_DOC * p["ndocs"])
    p.setdefault("tier_threshold", p["centroid_score_threshold"] - TIER_GAP)
    p.setdefault("nfinal", max(2 * k, p["ndocs"] // 8))
    p.setdefault("bf16", kernels.bf16_fast(device))
    return p


def centroid_scores(snap: Snapshot, queries: torch.Tensor) -> torch.Tensor:
    """[nq, Lq, C] query-token x centroid similarities."""
    nq, lq, d = queries.shape
    return (queries.reshape(nq * lq, d) @ snap.codec.centroids.T).view(nq, lq, -1)


def probe(
    snap: Snapshot, query: torch.Tensor, ncells: int, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ST [C, Lq] centroid x query-token scores, cmax [C] each centroid's best, the probed cells: each
    query token's top ``ncells`` centroids, repeats allowed) for one query [Lq, dim]; ``bf16`` as in
    ``kernels.scores``."""
    ST, cmax, top = kernels.scores(snap.codec.centroids, query, bf16)
    if ncells == 1:
        return ST, cmax, top
    return ST, cmax, ST.topk(min(ncells, ST.shape[0]), dim=0).indices.flatten()


def _add(stats: dict, key: str, value: int) -> None:
    stats[key] = stats.get(key, 0) + value


def stage2(
    snap: Snapshot,
    query: torch.Tensor,
    ST: torch.Tensor,
    cmax: torch.Tensor,
    cells: torch.Tensor,
    mask: torch.Tensor,
    p: dict,
    stats: dict,
    w: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1-2 for one query: ([n, Lq] per query token the best similarity among each candidate's
    vectors in kept centroids (-inf if none), [n] global document numbers of the n candidates).
    ``ST`` [C, Lq], ``cmax`` and ``cells`` as ``probe`` gives them; ``p`` the resolved parameters.
    Over ``ncandidates`` candidates (all segments together, so that how the index happens to be split
    into segments changes neither the work nor the result), those with the best centroid-only
    approximation (PLAID's stage 2) are kept before any vector is read."""
    lq = query.shape[0]
    dev = cmax.device
    kept = (cmax >= p["centroid_score_threshold"]).nonzero().flatten()
    bases = snap.bases.tolist()
    found = []  # (segment number, its candidates, their rowmap)
    for s, seg in enumerate(snap.segments):
        cand, rowmap = select_candidates(seg.ivf_offsets, seg.ivf_docs, cells, mask[bases[s] : bases[s + 1]])
        if cand.numel():
            found.append((s, cand, rowmap))
    n_all = sum(cand.numel() for _, cand, _ in found)
    _add(stats, "candidates", n_all)
    if n_all > p["ncandidates"]:
        found = _prune_candidates(snap, found, kept, ST, p["ncandidates"], w)
    best = filled(sum(cand.numel() for _, cand, _ in found), lq, device=dev)
    lo, gidx = 0, []
    for s, cand, rowmap in found:  # each segment's candidates: a run of rows of best
        seg, n = snap.segments[s], cand.numel()
        pos, rows = select_ivf(*seg.vector_ivf(cmax.shape[0]), kept, rowmap, n)
        _add(stats, "stage2_dot_products", int(pos.numel()) * lq)
        seg.score_max(snap.codec, pos, rows, query, best[lo : lo + n], p["full_rerank"], trusted=True, bf16=p["bf16"])
        gidx.append(cand.to(dev) + bases[s])
        lo += n
    if not gidx:
        return best, torch.empty(0, dtype=torch.int64, device=dev)
    return best, gidx[0] if len(gidx) == 1 else torch.cat(gidx)


def _prune_candidates(
    snap: Snapshot, found: list, kept: torch.Tensor, ST: torch.Tensor, n: int, w: torch.Tensor | None
) -> list:
    """``found`` ((segment, candidates, rowmap) per segment) cut to the ``n`` candidates of all segments
    with the best centroid-only approximation (``centroid_max``; ties to the earlier segment, then the
    lower document)."""
    approx = [
        centroid_max(snap.segments[s].ivf_offsets, snap.segments[s].ivf_docs, kept, rowmap, cand.numel(), ST)
        for s, cand, rowmap in found
    ]
    top = top_rows(approx[0] if len(approx) == 1 else torch.cat(approx), n, w).cpu()  # increasing
    ends = torch.tensor([cand.numel() for _, cand, _ in found]).cumsum(0)
    cuts = torch.searchsorted(top, ends).tolist()
    out, lo = [], 0
    for (s, cand, _), hi, start in zip(found, cuts, [0, *ends.tolist()[:-1]], strict=True):
        if hi > lo:
            mine = cand[(top[lo:hi] - start).to(cand.device)]
            out.append((s, mine, rank_map(mine, snap.segments[s].n_docs)))
        lo = hi
    return out


def score_tokens(
    snap: Snapshot,
    query: torch.Tensor,
    best: torch.Tensor,
    gidx: torch.Tensor,
    cmask: torch.Tensor | None,
    full: bool,
    stats: dict,
    stage: int,
    bf16: bool = False,
) -> None:
    """In place: ``best`` [m, Lq] of documents ``gidx`` (increasing, as ``stage2`` and ``top_rows`` leave
    them) raised by their vectors whose centroid is set in ``cmask`` [C] (stage 3: the tier stage 2 did
    not see; stage 4: all the rest, or with None all of them); ``bf16`` as in ``Segment.score_max``.
    Each segment's documents are a run of rows, scored into that slice of ``best``."""
    gidx = gidx.cpu()
    bounds = torch.searchsorted(gidx, snap.bases.cpu()).tolist() if len(snap.segments) > 1 else [0, gidx.numel()]
    bases = snap.bases.tolist()
    for s, seg in enumerate(snap.segments):
        lo, hi = bounds[s], bounds[s + 1]
        if lo == hi:
            continue
        pos, rows = select_tokens(seg.offsets, gidx[lo:hi] - bases[s], seg.codes, cmask)
        _add(stats, f"stage{stage}_dot_products", int(pos.numel()) * query.shape[0])
        seg.score_max(snap.codec, pos, rows, query, best[lo:hi], full, trusted=True, bf16=bf16)


def stage3(
    snap: Snapshot,
    query: torch.Tensor,
    best: torch.Tensor,
    gidx: torch.Tensor,
    cmax: torch.Tensor,
    p: dict,
    stats: dict,
    w: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Stage 3 for one query: over ``nfinal`` documents, their vectors in the tier of centroids between
    ``tier_threshold`` and ``centroid_score_threshold`` raise ``best``, and the ``nfinal`` best are kept.
    Returns (best, gidx, seen): every vector of the survivors in a centroid scoring at least ``seen``
    has been scored."""
    seen = p["centroid_score_threshold"]
    if gidx.numel() > p["nfinal"]:
        low = p["tier_threshold"]
        if low < seen:
            score_tokens(snap, query, best, gidx, (cmax >= low) & (cmax < seen), p["full_rerank"], stats, 3, p["bf16"])
            seen = low
        best, gidx = _keep(best, gidx, top_rows(best, p["nfinal"], w))
    return best, gidx, seen


def stage4(
    snap: Snapshot,
    query: torch.Tensor,
    best: torch.Tensor,
    gidx: torch.Tensor,
    cmax: torch.Tensor,
    seen: float,
    p: dict,
    stats: dict,
) -> torch.Tensor:
    """Stage 4, exact MaxSim: the survivors' vectors not yet scored (centroids below ``seen``) complete
    their per-token maxima, in float32; after bfloat16 stages (``bf16``) all of their vectors are scored
    again instead. Returns the exact per-token maxima."""
    if p["bf16"]:
        best = filled(*best.shape, device=best.device)
    score_tokens(snap, query, best, gidx, None if p["bf16"] else cmax < seen, p["full_rerank"], stats, 4)
    return best


def _keep(best: torch.Tensor, gidx: torch.Tensor, top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``top`` of ``best`` and ``gidx`` (``index_select``: unlike ``best[top]`` it opens no
    OpenMP region, see ``kernels.filled``)."""
    return best.index_select(0, top), gidx[top]


def search(
    snap: Snapshot,
    queries: torch.Tensor,
    k: int,
    params: dict,
    mask: torch.Tensor,
    query_weights: torch.Tensor | None = None,
    stats: dict | None = None,
):
    p = resolve(k, params, queries.shape[1], snap.codec.centroids.device)
    stats = stats if stats is not None else {}
    stats["params"] = p
    nq = queries.shape[0]
    out_s = torch.full((nq, k), float("-inf"))
    out_i = torch.full((nq, k), -1, dtype=torch.int64)
    for q in range(nq):
        w = query_weights[q].to(queries.device) if query_weights is not None else None
        query = queries[q]
        ST, cmax, cells = probe(snap, query, p["ncells"], p["bf16"])
        best, gidx = stage2(snap, query, ST, cmax, cells, mask, p, stats, w)
        if gidx.numel() == 0:
            continue
        if gidx.numel() > p["ndocs"]:
            best, gidx = _keep(best, gidx, top_rows(best, p["ndocs"], w))
        best, gidx, seen = stage3(snap, query, best, gidx, cmax, p, stats, w)
        best = stage4(snap, query, best, gidx, cmax, seen, p, stats)
        gidx = gidx.cpu()
        scores = sum_best(best, snap.lengths_all[gidx], w)[None].cpu()
        _add(stats, "scored_docs", int(gidx.numel()))
        s, i = topk(scores, gidx, k)
        out_s[q], out_i[q] = s[0], i[0]
    stats["dot_products"] = sum(stats.get(f"stage{n}_dot_products", 0) for n in (2, 3, 4))
    return out_s, out_i
