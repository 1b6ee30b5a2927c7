"""Approximate search methods measured against exact MaxSim on the uncompressed vectors."""

from __future__ import annotations

import pytest
import torch
from index_helpers import build, recall

from tessera.index import kernels, plaid, xtr


def test_plaid_defaults_follow_k():
    assert plaid.defaults(10) == {"ncells": 1, "centroid_score_threshold": 0.5, "ndocs": 256, "full_rerank": True}
    assert plaid.defaults(100) == {"ncells": 2, "centroid_score_threshold": 0.45, "ndocs": 1024, "full_rerank": True}
    assert plaid.defaults(1000) == {"ncells": 4, "centroid_score_threshold": 0.4, "ndocs": 4096, "full_rerank": True}
    assert plaid.defaults(2000)["ndocs"] == 8000
    assert plaid.resolve(10, {}) == {
        **plaid.defaults(10),
        "ncandidates": 1024,
        "tier_threshold": pytest.approx(0.3),
        "nfinal": 32,
        "bf16": kernels.bf16_fast("cpu"),
    }
    assert plaid.resolve(10, {}, device="meta")["bf16"] is False
    assert plaid.resolve(100, {"ndocs": 512})["nfinal"] == 200
    assert plaid.resolve(100, {"ndocs": 512})["ncandidates"] == 2048


def test_plaid_probes_as_many_cells_for_a_short_query_as_for_a_32_token_one():
    # a clustered model's query (CRISP: 4 or 16 representatives) gets ncells x ceil(32 / vectors)
    assert plaid.resolve(1000, {}, query_vectors=4)["ncells"] == 4 * 8
    assert plaid.resolve(10, {}, query_vectors=16)["ncells"] == 2
    assert plaid.resolve(100, {}, query_vectors=5)["ncells"] == 2 * 7
    assert plaid.resolve(10, {}, query_vectors=32)["ncells"] == 1
    assert plaid.resolve(10, {}, query_vectors=42)["ncells"] == 1  # PRF's expanded query
    assert plaid.resolve(1000, {"ncells": 3}, query_vectors=4)["ncells"] == 3  # explicit stays


def test_plaid_short_queries_probe_more_cells_in_a_real_search(built, queries):
    short = queries[:, :4]
    _, scaled = built.search_with_stats(short, k=10, method="plaid")
    _, one = built.search_with_stats(short, k=10, method="plaid", params={"ncells": 1})
    assert scaled["params"]["ncells"] == 8
    assert scaled["candidates"] > one["candidates"]


def test_plaid_recall_against_exact(built, queries, truth):
    exact = built.search(queries, k=10, method="exact")
    hits, stats = built.search_with_stats(queries, k=10, method="plaid")
    assert recall(hits, truth, 10) >= 0.85
    assert recall(hits, [[h.id for h in r] for r in exact], 10) >= 0.95
    # it really prunes: far fewer documents are decompressed than exist
    assert stats["scored_docs"] <= len(queries) * 64
    assert stats["candidates"] > stats["scored_docs"]
    hits100 = built.search(queries, k=100, method="plaid")
    exact100 = [[h.id for h in r] for r in built.search(queries, k=100, method="exact")]
    assert recall(hits100, truth, 100) >= 0.8
    assert recall(hits100, exact100, 100) >= 0.95


def test_plaid_stage_three_tightens_the_approximation(built, queries, truth):
    params = {"ndocs": 60, "nfinal": 12}
    base, off = built.search_with_stats(queries, k=10, method="plaid", params={**params, "tier_threshold": 0.5})
    tiered, on = built.search_with_stats(queries, k=10, method="plaid", params=params)
    assert off.get("stage3_dot_products", 0) == 0 < on["stage3_dot_products"]
    assert on["dot_products"] == sum(on[f"stage{n}_dot_products"] for n in (2, 3, 4))
    assert recall(tiered, truth, 10) >= recall(base, truth, 10)


def test_plaid_scores_are_exact_scores_of_returned_docs(built, queries):
    hits = built.search(queries[0], k=5, method="plaid")[0]
    rescored = {h.id: h.score for h in built.score(queries[0], [h.id for h in hits])}
    assert [h.score for h in hits] == pytest.approx([rescored[h.id] for h in hits], rel=1e-5)


def test_plaid_params_change_the_work_done(built, queries):
    _, small = built.search_with_stats(queries, k=10, method="plaid", params={"ndocs": 40})
    _, large = built.search_with_stats(
        queries, k=10, method="plaid", params={"ndocs": 400, "ncells": 4, "centroid_score_threshold": 0.2}
    )
    assert small["scored_docs"] < large["scored_docs"]
    assert small["candidates"] < large["candidates"]
    with pytest.raises(ValueError, match="positive int"):
        built.search(queries, k=10, method="plaid", params={"ndocs": 0})
    with pytest.raises(ValueError, match="unknown parameter"):
        built.search(queries, k=10, method="plaid", params={"nprobe": 3})
    with pytest.raises(ValueError, match="positive int"):
        built.search(queries, k=10, method="plaid", params={"nfinal": 0})
    with pytest.raises(ValueError, match="finite number"):
        built.search(queries, k=10, method="plaid", params={"centroid_score_threshold": float("nan")})


@pytest.mark.parametrize("method", ["plaid", "xtr"])
def test_filters_and_tombstones_apply_to_approximate_methods(corpus, doc_ids, queries, method):
    index = build(corpus.docs.select(range(200)), doc_ids[:200])
    top = {h.id for row in index.search(queries, k=5, method=method) for h in row}
    index.delete(list(top))
    after = index.search(queries, k=5, method=method)
    assert not top & {h.id for row in after for h in row}
    allowed = [d for d in doc_ids[:200:4] if d in index]
    hits = index.search(queries, k=10, method=method, allowed_ids=allowed)
    assert all({h.id for h in row} <= set(allowed) for row in hits)
    assert sum(len(row) for row in hits) > 0


def test_query_weights_scale_scores(built, queries):
    q = queries[:2]
    base, _ = built.search_with_stats(q, k=3, method="plaid")
    doubled, _ = built.search_with_stats(q, k=3, method="plaid", query_weights=torch.full(q.shape[:2], 2.0))
    assert [h.id for h in doubled[0]] == [h.id for h in base[0]]
    assert doubled[0][0].score == pytest.approx(2 * base[0][0].score, rel=1e-5)


def test_xtr_scores_from_retrieved_tokens_with_far_fewer_dot_products(built, queries, truth):
    hits, xs = built.search_with_stats(queries, k=10, method="xtr")
    _, ps = built.search_with_stats(queries, k=10, method="plaid")
    assert recall(hits, truth, 10) >= 0.7
    assert xs["dot_products"] * 5 <= ps["dot_products"]
    # only vectors of probed cells are scored, never whole documents
    assert xs["scored_vectors"] < built.stats()["vectors"] * len(queries) / 2
    more, more_stats = built.search_with_stats(queries, k=10, method="xtr", params={"nprobe": 32, "k_prime": 2000})
    assert more_stats["dot_products"] > xs["dot_products"]
    assert recall(more, truth, 10) >= 0.75


def test_xtr_imputes_missing_similarities(built, queries):
    """A document's XTR score never exceeds its exact MaxSim by more than rounding, because each
    query token contributes either a retrieved similarity or a lower estimate."""
    hits = built.search(queries[0], k=10, method="xtr")[0]
    exact = {h.id: h.score for h in built.score(queries[0], [h.id for h in hits])}
    assert all(h.score <= exact[h.id] + 1e-3 for h in hits)
    assert all(h.score > 0.5 * exact[h.id] for h in hits[:3])


@pytest.mark.parametrize("bf16", [False, True])
def test_plaid_stages_score_exactly_the_tokens_they_select(built, queries, bf16):
    """Stage 2: per query token, the best exact similarity among a candidate's vectors in kept centroids
    (-inf if none; with ``bf16``, of the rounded query and vectors); stage 3 adds the vectors of the next
    tier; stage 4 the rest, which makes it exact MaxSim."""
    snap = built.snapshot
    seg = snap.segments[0]
    q = queries[0]
    ST, cmax, cells = plaid.probe(snap, q, 1)
    torch.testing.assert_close(ST, snap.codec.centroids @ q.T)
    assert torch.equal(cmax, ST.amax(1)) and torch.equal(cells, ST.argmax(0))
    p = plaid.resolve(10, {"ncandidates": 10**6, "bf16": bf16})
    best, gidx = plaid.stage2(snap, q, ST, cmax, cells, snap.alive_all, p, {})
    kept = cmax >= 0.5
    rounded = kernels.rounded if bf16 else (lambda x: x)
    off = 0.0  # how far the float32 similarities are from these
    for j in range(0, gidx.numel(), max(1, gidx.numel() // 10)):
        d = int(gidx[j])
        span = slice(int(seg.offsets[d]), int(seg.offsets[d + 1]))
        v = snap.codec.decompress(seg.codes[span], seg.residuals[span])
        sel = kept[seg.codes[span].long()]
        if not sel.any():
            assert torch.equal(best[j], torch.full((q.shape[0],), float("-inf")))
            continue
        assert torch.allclose(best[j], (rounded(v[sel]) @ rounded(q).T).amax(0), atol=1e-5 if not bf16 else 1e-4)
        off = max(off, float((best[j] - (v[sel] @ q.T).amax(0)).abs().max()))
    assert (off > 1e-4) == bf16  # bfloat16 operands do round
    if bf16:
        return
    some = gidx[:20]
    lower, stats = best[:20].clone(), {}
    plaid.score_tokens(snap, q, lower, some, (cmax >= 0.3) & (cmax < 0.5), True, stats, 3)
    full = lower.clone()
    plaid.score_tokens(snap, q, full, some, cmax < 0.3, True, stats, 4)
    ids = [snap.id_of(int(g)) for g in some]
    scores = {h.id: h.score for h in built.score(q, ids)}
    exact = torch.tensor([scores[i] for i in ids])
    assert (kernels.clamped_sum(lower, None) <= full.sum(1) + 1e-4).all()
    assert torch.allclose(full.sum(1), exact, atol=1e-3)
    # every vector of the 20 documents was scored exactly once over the three stages
    for mask, key in (((cmax >= 0.3) & (cmax < 0.5), "stage3_dot_products"), (cmax < 0.3, "stage4_dot_products")):
        n = sum(int(mask[seg.codes[seg.offsets[int(g)] : seg.offsets[int(g) + 1]].long()].sum()) for g in some)
        assert stats[key] == n * q.shape[0]


def test_xtr_scores_probed_vectors_with_the_originals_when_kept(corpus, doc_ids, queries):
    index = build(corpus.docs.select(range(150)), doc_ids[:150], keep_vectors=True)
    snap = index.snapshot
    seg = snap.segments[0]
    q = queries[0]
    S = (snap.codec.centroids @ q.T).T.contiguous()
    tok, doc, sim = xtr.retrieve(snap, q, S, 4, snap.alive_all, {}, exact_tokens=True)
    _, _, approx = xtr.retrieve(snap, q, S, 4, snap.alive_all, {}, exact_tokens=False)
    voff, order, _ = seg.vector_ivf(snap.codec.ncentroids)
    # the same probed (token, vector) entries in the same order: compare with the originals directly
    probes = S.topk(4, dim=1).indices.flatten()
    pos = torch.cat([order[int(voff[c]) : int(voff[c + 1])].long() for c in probes.tolist()])
    want = (seg.vectors[pos].float() * q[tok]).sum(1)
    assert torch.allclose(sim, want, atol=1e-4)
    assert not torch.allclose(sim, approx, atol=1e-4)  # the codes are only an approximation
    exact_hits, st1 = index.search_with_stats(queries, k=10, method="xtr")
    code_hits, st2 = index.search_with_stats(queries, k=10, method="xtr", params={"exact_tokens": False})
    assert st1["dot_products"] == st2["dot_products"]


def test_plaid_ncandidates_keeps_the_best_centroid_scored_candidates(built, queries):
    """Over ``ncandidates`` candidates, stage 2 reads the vectors of only those that PLAID's centroid
    interaction ranks best; without the limit every candidate is scored."""
    snap = built.snapshot
    q = queries[0]
    ST, cmax, cells = plaid.probe(snap, q, 1)
    every, few = plaid.resolve(10, {"ncandidates": 10**6}), plaid.resolve(10, {"ncandidates": 15})
    all_stats, few_stats = {}, {}
    best_all, g_all = plaid.stage2(snap, q, ST, cmax, cells, snap.alive_all, every, all_stats)
    best_few, g_few = plaid.stage2(snap, q, ST, cmax, cells, snap.alive_all, few, few_stats)
    assert g_all.numel() > 15 == g_few.numel()
    assert few_stats["stage2_dot_products"] < all_stats["stage2_dot_products"]
    seg = snap.segments[0]
    rowmap = torch.full((seg.n_docs,), -1, dtype=torch.int64)
    rowmap[g_all] = torch.arange(g_all.numel())
    kept = (cmax >= every["centroid_score_threshold"]).nonzero().flatten()
    approx = kernels.centroid_max(seg.ivf_offsets, seg.ivf_docs, kept, rowmap, g_all.numel(), ST)
    order = torch.sort(kernels.clamped_sum(approx, None), descending=True, stable=True).indices  # ties: lower first
    want = g_all[order[:15].sort().values]
    assert torch.equal(g_few, want)
    # the kept candidates' residual scores are those they get without the limit
    pos = {int(d): i for i, d in enumerate(g_all)}
    assert torch.equal(best_few, best_all[[pos[int(d)] for d in g_few]])


def test_plaid_ncandidates_counts_the_candidates_of_all_segments(corpus, doc_ids, queries):
    """With several segments ``ncandidates`` still bounds the candidates of the whole index (not of each
    segment): the best by centroid-only approximation over all of them, ties to the earlier segment."""
    half = len(doc_ids) // 2
    index = build(corpus.docs.select(list(range(half))), doc_ids[:half], merge_ratio=0)
    index.add(doc_ids[half:], corpus.docs.select(list(range(half, len(doc_ids)))))
    snap = index.snapshot
    assert len(snap.segments) == 2
    q = queries[0]
    ST, cmax, cells = plaid.probe(snap, q, 1)
    every, few = plaid.resolve(10, {"ncandidates": 10**6}), plaid.resolve(10, {"ncandidates": 15})
    best_all, g_all = plaid.stage2(snap, q, ST, cmax, cells, snap.alive_all, every, {})
    best_few, g_few = plaid.stage2(snap, q, ST, cmax, cells, snap.alive_all, few, {})
    in_second = g_all >= int(snap.bases[1])
    assert 0 < int(in_second.sum()) < g_all.numel() and g_all.numel() > 15 == g_few.numel()
    kept = (cmax >= every["centroid_score_threshold"]).nonzero().flatten()
    approx = []
    for s, seg in enumerate(snap.segments):
        mine = g_all[(g_all >= int(snap.bases[s])) & (g_all < int(snap.bases[s + 1]))] - int(snap.bases[s])
        rowmap = torch.full((seg.n_docs,), -1, dtype=torch.int64)
        rowmap[mine] = torch.arange(mine.numel())
        approx.append(kernels.centroid_max(seg.ivf_offsets, seg.ivf_docs, kept, rowmap, mine.numel(), ST))
    order = torch.sort(kernels.clamped_sum(torch.cat(approx), None), descending=True, stable=True).indices
    assert torch.equal(g_few, g_all[order[:15].sort().values])
    pos = {int(d): i for i, d in enumerate(g_all)}
    assert torch.equal(best_few, best_all[[pos[int(d)] for d in g_few]])
