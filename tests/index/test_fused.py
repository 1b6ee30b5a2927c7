"""The compiled scoring kernel (index/_fused.c) against its torch reference path."""

from __future__ import annotations

import os
import platform
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from index_helpers import build

from tessera.index import kernels, plaid
from tessera.index.codec import ResidualCodec

needs_kernel = pytest.mark.skipif(kernels.FUSED is None, reason="compiled kernel not built or CPU unsupported")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="kernels are x86-64 only")
def test_kernel_is_built_where_the_cpu_supports_it(monkeypatch):
    """A failed (optional) build would silently leave only the torch path: fail loudly here instead."""
    flags = _cpu_flags()
    if not ({"avx512f"} <= flags or {"avx2", "fma", "f16c"} <= flags):
        pytest.skip("CPU has neither AVX-512F nor AVX2+FMA+F16C")
    monkeypatch.delenv("TESSERA_FUSED", raising=False)
    module = kernels._load_fused()
    assert module is not None
    assert module.kernel() == ("avx512" if "avx512f" in flags else "avx2")


def test_env_switch_forces_the_torch_path(monkeypatch):
    monkeypatch.setenv("TESSERA_FUSED", "0")
    assert kernels._load_fused() is None


@needs_kernel
def test_env_switch_leaves_out_the_bf16_kernel(monkeypatch):
    before = kernels.FUSED.bf16()
    monkeypatch.setenv("TESSERA_BF16", "0")
    try:
        assert kernels._load_fused().bf16() is False
        assert kernels.bf16_fast("cpu") is False
        assert plaid.resolve(10, {})["bf16"] is False
    finally:
        kernels.FUSED.bf16(before)


@pytest.fixture(params=["avx512", "avx2"])
def each_kernel(request):
    """Every test runs with each kernel this CPU can run (an AVX-512 machine runs the AVX2 one too)."""
    if kernels.FUSED is None:
        yield None
        return
    before = kernels.FUSED.kernel()
    if not kernels.FUSED.select(request.param):
        pytest.skip(f"this CPU cannot run the {request.param} kernel")
    yield request.param
    kernels.FUSED.select(before)


@pytest.fixture(scope="module")
def indexes(corpus, doc_ids):
    """Indexes with and without the fp16 originals (read-only)."""
    return {keep: build(corpus.docs, doc_ids, keep_vectors=keep) for keep in (True, False)}


def _torch_reference(vectors, pos, rows, query, best):
    sims = vectors[pos].float() @ query.T
    return best.clone().scatter_reduce_(0, rows[:, None].expand(-1, query.shape[0]), sims, "amax")


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
@pytest.mark.parametrize("dim", [16, 128])
@pytest.mark.parametrize("lq", [1, 17, 32, 42])
@pytest.mark.parametrize("n", [0, 5, 257])
def test_gather_max_matches_torch(dim, lq, n):
    g = torch.Generator().manual_seed(dim * 1000 + lq * 10 + n)
    vectors = torch.randn(300, dim, generator=g).half()
    pos = torch.randint(0, 300, (n,), generator=g)
    rows = torch.randint(0, 7, (n,), generator=g)
    query = torch.randn(lq, dim, generator=g)
    start = torch.where(torch.rand(7, lq, generator=g) < 0.5, 0.0, float("-inf"))
    got = start.clone()
    kernels.gather_max(vectors, pos, rows, query, got)
    torch.testing.assert_close(got, _torch_reference(vectors, pos, rows, query, start), rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
@pytest.mark.parametrize("codes", [False, True])
def test_two_threads_give_what_one_gives(monkeypatch, codes):
    """Over 2048 vectors, a call may split them over two threads (rows shared by both halves are
    merged); the result is the same as on one thread."""
    g = torch.Generator().manual_seed(7)
    v = torch.nn.functional.normalize(torch.randn(5000, 32, generator=g), dim=1)
    pos = torch.randint(0, 5000, (4099,), generator=g)
    rows = torch.randint(0, 50, (4099,), generator=g)  # every row gets vectors from both halves
    query = torch.randn(32, 32, generator=g)
    codec = ResidualCodec.train(v, nbits=2, ncentroids=16, niter=2)
    codes_, packed = codec.compress(v)

    def run():
        best = torch.full((50, 32), float("-inf"))
        if codes:
            codec.score_max(codes_, packed, pos, rows, query, best)
        else:
            kernels.gather_max(v.half(), pos, rows, query, best)
        return best

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(kernels, "MAX_THREADS", 2)
    split = run()
    monkeypatch.setattr(kernels, "MAX_THREADS", 1)
    torch.testing.assert_close(split, run(), rtol=0, atol=0)


@pytest.fixture(params=["avx512 bf16", "avx512 rounded", "avx2 rounded"])
def each_bf16(request):
    """bf16 scoring by the AVX512-BF16 kernel where the CPU has it, and by each float32 kernel on rounded
    operands."""
    if kernels.FUSED is None:
        yield None
        return
    name, how = request.param.split()
    before, before_bf16 = kernels.FUSED.kernel(), kernels.FUSED.bf16()
    if not kernels.FUSED.select(name):
        pytest.skip(f"this CPU cannot run the {name} kernel")
    if kernels.FUSED.bf16(how == "bf16") != (how == "bf16"):
        kernels.FUSED.select(before)
        pytest.skip("this CPU has no AVX512-BF16")
    yield request.param
    kernels.FUSED.select(before)
    kernels.FUSED.bf16(before_bf16)


@needs_kernel
@pytest.mark.usefixtures("each_bf16")
@pytest.mark.parametrize("dim", [16, 128])
@pytest.mark.parametrize("lq", [17, 32, 48])
@pytest.mark.parametrize("codes", [False, True])
def test_bf16_scoring_matches_torch_on_rounded_operands(monkeypatch, dim, lq, codes):
    """bf16=True: query and vectors rounded to bfloat16 (a compressed vector after its normalisation),
    products summed in float32: the kernel gives what torch gives on the rounded operands, not the
    float32 products. dim 16 is not a multiple of 32: the float32 kernel rounds the operands instead."""
    g = torch.Generator().manual_seed(dim + lq)
    v = torch.nn.functional.normalize(torch.randn(3000, dim, generator=g), dim=1)
    pos = torch.randint(0, 3000, (2500,), generator=g)
    rows = torch.randint(0, 30, (2500,), generator=g)
    query = torch.randn(lq, dim, generator=g)
    codec = ResidualCodec.train(v, nbits=2, ncentroids=16, niter=2) if codes else None
    packed = codec.compress(v) if codes else None

    def run(bf16: bool) -> torch.Tensor:
        best = torch.full((30, lq), float("-inf"))
        if codes:
            codec.score_max(*packed, pos, rows, query, best, bf16=bf16)
        else:
            kernels.gather_max(v.half(), pos, rows, query, best, bf16=bf16)
        return best

    got, plain = run(True), run(False)
    monkeypatch.setattr(kernels, "FUSED", None)
    torch.testing.assert_close(got, run(True), rtol=1e-5, atol=1e-4 if not codes else 2e-3)
    assert (got - plain).abs().max() > 1e-3  # the rounding is there
    assert (got - plain).abs().max() < 2**-7 * float((query.abs().sum(1)).max())


@needs_kernel
def test_plaid_with_bf16_pruning_returns_exact_scores(indexes, queries):
    """The bfloat16 stages only prune: the scores returned are exact MaxSim (stage 4 scores every vector
    of the survivors again in float32), and the hits mostly those of float32 pruning."""
    index = indexes[True]
    rounded, stats = index.search_with_stats(queries, k=10, method="plaid", params={"bf16": True})
    plain, plain_stats = index.search_with_stats(queries, k=10, method="plaid", params={"bf16": False})
    same = 0
    for q, (a, b) in enumerate(zip(rounded, plain, strict=True)):
        exact = {h.id: h.score for h in index.score(queries[q], [h.id for h in a])}
        torch.testing.assert_close(torch.tensor([h.score for h in a]), torch.tensor([exact[h.id] for h in a]))
        same += len({h.id for h in a} & {h.id for h in b})
    assert same >= 0.95 * sum(len(b) for b in plain)
    assert stats["scored_docs"] == plain_stats["scored_docs"]  # as many survivors, all their vectors rescored
    assert stats["stage4_dot_products"] > plain_stats["stage4_dot_products"]


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
def test_split_calls_use_the_worker_and_concurrent_callers_get_their_own_results(monkeypatch):
    """The second thread is one kept worker: back-to-back calls find it awake and share their vectors
    with it; callers in other threads meanwhile run alone. Every result equals the one-thread one."""
    g = torch.Generator().manual_seed(11)
    v = torch.nn.functional.normalize(torch.randn(6000, 64, generator=g), dim=1).half()
    jobs = [
        (torch.randint(0, 6000, (3000 + 500 * i,), generator=g), torch.randint(0, 40, (3000 + 500 * i,), generator=g),
         torch.randn(16, 64, generator=g))
        for i in range(6)
    ]  # fmt: skip

    def run(pos, rows, q):
        best = torch.full((40, 16), float("-inf"))
        kernels.gather_max(v, pos, rows, q, best)
        return best

    monkeypatch.setattr(kernels, "MAX_THREADS", 1)
    want = [run(*j) for j in jobs]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(kernels, "MAX_THREADS", 2)
    before = kernels.FUSED.worker_jobs()
    for _ in range(200):
        assert all(torch.equal(run(*j), w) for j, w in zip(jobs, want, strict=True))
        if kernels.FUSED.worker_jobs() > before:
            break
    assert kernels.FUSED.worker_jobs() > before
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            got = list(pool.map(lambda j: run(*j), jobs))
            assert all(torch.equal(a, w) for a, w in zip(got, want, strict=True))


@needs_kernel
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_worker(monkeypatch):
    """The worker thread does not survive fork: a child's split calls start one of their own (and never
    wait for the parent's), with the same results."""
    g = torch.Generator().manual_seed(13)
    v = torch.nn.functional.normalize(torch.randn(4000, 32, generator=g), dim=1).half()
    pos, rows = torch.randint(0, 4000, (3000,), generator=g), torch.randint(0, 30, (3000,), generator=g)
    q = torch.randn(16, 32, generator=g)

    def run():
        best = torch.full((30, 16), float("-inf"))
        kernels.gather_max(v, pos, rows, q, best)
        return best.numpy().copy()

    monkeypatch.setattr(kernels, "MAX_THREADS", 1)
    want = run()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(kernels, "MAX_THREADS", 2)
    run()  # the parent's worker exists before the fork
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when its results are right and its own worker joined a call
        ok = False
        try:
            before = kernels.FUSED.worker_jobs()
            ok = all((run() == want).all() for _ in range(100)) and kernels.FUSED.worker_jobs() > before
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if status[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status[1]) == 0


@needs_kernel
def test_top_rows_match_torch(monkeypatch):
    """The C selection keeps the rows the torch path keeps: largest clamped (weighted) sums, ties to the
    lower row, returned in increasing order."""
    g = torch.Generator().manual_seed(5)
    for m in (1, 7, 300, 1608):
        best = torch.randn(m, 32, generator=g)
        best[torch.rand(m, 32, generator=g) < 0.3] = float("-inf")
        best[m // 2 :: 5] = best[m // 3].clone()  # ties
        for w in (None, torch.rand(32, generator=g) + 0.5):
            for n in sorted({1, 5, max(1, m - 1), m, m + 3}):
                got = kernels.top_rows(best, n, w)
                with monkeypatch.context() as mp:
                    mp.setattr(kernels, "FUSED", None)
                    want = kernels.top_rows(best, n, w)
                assert torch.equal(got, want), (m, n, w is None)
                assert got.numel() == min(n, m)
    with pytest.raises(ValueError, match="weights"):
        kernels.top_rows(best, 3, torch.ones(31))


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
def test_gather_max_rejects_out_of_range_positions_and_rows():
    vectors = torch.randn(10, 16).half()
    query = torch.randn(4, 16)
    with pytest.raises(IndexError):
        kernels.gather_max(vectors, torch.tensor([10]), torch.tensor([0]), query, torch.zeros(1, 4))
    with pytest.raises(IndexError):
        kernels.gather_max(vectors, torch.tensor([0]), torch.tensor([1]), query, torch.zeros(1, 4))
    with pytest.raises(IndexError):
        kernels.gather_max(vectors, torch.tensor([-1]), torch.tensor([0]), query, torch.zeros(1, 4))


def test_unsupported_operands_take_the_torch_path():
    """fp32 tables (or dims that are not multiples of 16) are scored in torch, with the same result."""
    vectors = torch.randn(50, 24)
    pos, rows, query = torch.arange(50), torch.arange(50) % 5, torch.randn(3, 24)
    assert not kernels.fused_ok(vectors, query)
    got = torch.zeros(5, 3)
    kernels.gather_max(vectors, pos, rows, query, got)
    torch.testing.assert_close(got, _torch_reference(vectors, pos, rows, query, torch.zeros(5, 3)))


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
@pytest.mark.parametrize("quantizer, nbits", [("scalar", 1), ("scalar", 2), ("scalar", 4), ("pq", 2)])
@pytest.mark.parametrize("normalize", [True, False])
def test_compressed_scoring_matches_decompress(corpus, quantizer, nbits, normalize):
    v = corpus.docs.vectors[:3000].float()
    if not normalize:
        v = v * 1.5  # not unit vectors: the codec does not renormalise
    codec = ResidualCodec.train(v, nbits=nbits, ncentroids=64, niter=2, quantizer=quantizer)
    assert codec.normalize == normalize
    codes, packed = codec.compress(v)
    g = torch.Generator().manual_seed(nbits)
    pos = torch.randint(0, v.shape[0], (777,), generator=g)
    rows = torch.randint(0, 40, (777,), generator=g)
    query = torch.randn(32, v.shape[1], generator=g)
    want = torch.zeros(40, 32).scatter_reduce_(
        0, rows[:, None].expand(-1, 32), codec.decompress(codes[pos], packed[pos]) @ query.T, "amax"
    )
    got = torch.zeros(40, 32)
    codec.score_max(codes, packed, pos, rows, query, got)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
@pytest.mark.parametrize("keep_vectors", [True, False])
@pytest.mark.parametrize(
    "method, params",
    [
        ("plaid", {"bf16": False}),
        ("plaid", {"bf16": True}),
        ("plaid", {"full_rerank": False, "bf16": True}),
        ("exact", {}),
    ],
)
def test_search_gives_the_same_hits_with_and_without_the_kernel(
    indexes, queries, monkeypatch, keep_vectors, method, params
):
    index = indexes[keep_vectors]
    fused = index.search(queries, k=10, method=method, params=params)
    monkeypatch.setattr(kernels, "FUSED", None)
    plain = index.search(queries, k=10, method=method, params=params)
    for a, b in zip(fused, plain, strict=True):
        assert [h.id for h in a] == [h.id for h in b]
        torch.testing.assert_close(
            torch.tensor([h.score for h in a]), torch.tensor([h.score for h in b]), rtol=1e-5, atol=1e-4
        )


@needs_kernel
@pytest.mark.usefixtures("each_bf16")
@pytest.mark.parametrize("lq", [1, 17, 32, 42])
@pytest.mark.parametrize("n", [1, 5, 300])
@pytest.mark.parametrize("bf16", [False, True])
def test_centroid_scores_match_torch(monkeypatch, lq, n, bf16):
    g = torch.Generator().manual_seed(lq * 1000 + n)
    table = torch.randn(n, 64, generator=g)
    table[n // 2] = table[0]  # ties: the first row wins, as in torch
    query = torch.randn(lq, 64, generator=g)
    S, rowmax, argmax = kernels.scores(table, query, bf16)
    if bf16 and n > 1:
        assert (S - table @ query.T).abs().max() > 1e-3  # rounded operands
    monkeypatch.setattr(kernels, "FUSED", None)
    S_t, rowmax_t, argmax_t = kernels.scores(table, query, bf16)
    torch.testing.assert_close(S, S_t, rtol=1e-5, atol=1e-5)
    assert S.shape == (n, lq)
    torch.testing.assert_close(rowmax, S.amax(1), rtol=0, atol=0)
    assert torch.equal(argmax, S.argmax(0))
    torch.testing.assert_close(rowmax, rowmax_t, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
def test_centroid_scores_on_two_threads_give_what_one_gives(monkeypatch):
    """Over 2048 rows the table is split in two halves, one per thread; ties across the halves still
    go to the first row."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(4099, 64, generator=g)
    table[4098] = table[5]  # a tie between the halves
    query = torch.randn(32, 64, generator=g)
    query[7] = table[5] * 100  # token 7's best row is 5 (and 4098)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(kernels, "MAX_THREADS", 2)
    split = kernels.scores(table, query)
    monkeypatch.setattr(kernels, "MAX_THREADS", 1)
    one = kernels.scores(table, query)
    for a, b in zip(split, one, strict=True):
        assert torch.equal(a, b)
    assert split[2][7] == 5


@pytest.fixture(scope="module")
def two_segments(corpus, doc_ids):
    """An index of two segments, some documents deleted (read-only)."""
    half = len(doc_ids) // 2
    index = build(corpus.docs.select(list(range(half))), doc_ids[:half], keep_vectors=True, merge_ratio=0)
    index.add(doc_ids[half:], corpus.docs.select(list(range(half, len(doc_ids)))))
    index.delete(doc_ids[::9])
    assert len(index.snapshot.segments) == 2
    return index


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
@pytest.mark.parametrize("params", [{}, {"full_rerank": False}, {"ncells": 2, "ndocs": 40, "nfinal": 12}])
@pytest.mark.parametrize("bf16", [False, True])
def test_multi_segment_plaid_matches_the_torch_path(two_segments, queries, doc_ids, monkeypatch, params, bf16):
    params = {**params, "bf16": bf16}  # explicit: the default follows the kernel (kernels.bf16_fast)
    allowed = doc_ids[1::2]
    fused = two_segments.search(queries, k=10, method="plaid", params=params)
    filtered = two_segments.search(queries, k=10, method="plaid", params=params, allowed_ids=allowed)
    monkeypatch.setattr(kernels, "FUSED", None)
    assert [[h.id for h in r] for r in two_segments.search(queries, k=10, method="plaid", params=params)] == [
        [h.id for h in r] for r in fused
    ]
    plain = two_segments.search(queries, k=10, method="plaid", params=params, allowed_ids=allowed)
    assert [[h.id for h in r] for r in plain] == [[h.id for h in r] for r in filtered]
    assert all(h.id in set(allowed) for r in filtered for h in r)


def _csr(g: torch.Generator, n_rows: int, n_items: int, max_len: int):
    lengths = torch.randint(0, max_len, (n_rows,), generator=g)
    offsets = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0))
    return offsets, torch.randint(0, n_items, (int(offsets[-1]),), generator=g, dtype=torch.int32)


@needs_kernel
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selections_match_torch(monkeypatch, seed):
    """select_candidates / centroid_max / select_ivf / select_tokens in C give what their torch paths
    give, in order."""
    g = torch.Generator().manual_seed(seed)
    C, n_docs = 50, 80
    ivf_off, ivf_docs = _csr(g, C, n_docs, 12)  # centroid -> documents
    doc_off, codes = _csr(g, n_docs, C, 20)  # document -> its vectors' centroids
    order = torch.argsort(codes, stable=True).to(torch.int32)
    voff = torch.nn.functional.pad(torch.cumsum(torch.bincount(codes.long(), minlength=C), 0), (1, 0))
    order_docs = (torch.searchsorted(doc_off, order.long(), right=True) - 1).to(torch.int32)
    cells = torch.randint(0, C, (9,), generator=g)  # repeats allowed
    allowed = torch.rand(n_docs, generator=g) < 0.7
    kept = torch.randperm(C, generator=g)[:20]
    cmask = torch.rand(C, generator=g) < 0.4
    locs = torch.randperm(n_docs, generator=g)[:30]
    rows = torch.randint(0, 7, (30,), generator=g)

    S = torch.randn(C, 5, generator=g)

    def run():
        cand, rowmap = kernels.select_candidates(ivf_off, ivf_docs, cells, allowed)
        return (
            (cand, rowmap),
            (kernels.centroid_max(ivf_off, ivf_docs, kept, rowmap, cand.numel(), S),),
            kernels.select_ivf(voff, order, order_docs, kept, rowmap, cand.numel()),
            kernels.select_tokens(doc_off, locs, codes, cmask),
            kernels.select_tokens(doc_off, locs, codes, None, rows, 7),
        )

    fused = run()
    monkeypatch.setattr(kernels, "FUSED", None)
    plain = run()
    for a, b in zip(fused, plain, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.long(), y.long())
    assert fused[2][0].numel() > 0 and fused[3][0].numel() > 0
    ivf_rows = fused[2][1]
    assert (ivf_rows[1:] >= ivf_rows[:-1]).all()  # select_ivf: by row, each document's vectors together
    assert int(fused[4][0].numel()) == int((doc_off[locs + 1] - doc_off[locs]).sum())
    # centroid_max by its definition: per candidate, the best score among the kept centroids holding it
    cand, approx = fused[0][0], fused[1][0]
    for r, d in enumerate(cand.tolist()):
        held = [c for c in kept.tolist() if d in ivf_docs[ivf_off[c] : ivf_off[c + 1]].tolist()]
        want = S[held].amax(0) if held else torch.full((5,), float("-inf"))
        assert torch.equal(approx[r], want)


@needs_kernel
def test_selections_reject_out_of_range_ids():
    """The kernel trusts what the selections return: they check every id against the tables."""
    offsets = torch.tensor([0, 2, 5])  # 2 documents, 5 vectors
    codes = torch.tensor([0, 1, 2, 1, 0], dtype=torch.int32)
    cmask = torch.ones(3, dtype=torch.bool)
    with pytest.raises(IndexError):
        kernels.select_tokens(offsets, torch.tensor([2]), codes, cmask)  # no document 2
    with pytest.raises(IndexError):
        kernels.select_tokens(offsets, torch.tensor([0, 1]), codes, None, torch.tensor([0, 3]), 3)  # row 3 of 3
    with pytest.raises(IndexError):
        kernels.select_tokens(offsets, torch.tensor([1]), torch.tensor([0, 1, 2, 3, 0], dtype=torch.int32), cmask)
    with pytest.raises(IndexError):  # offsets beyond the vectors
        kernels.select_tokens(torch.tensor([0, 2, 9]), torch.tensor([1]), codes, cmask)
    voff = torch.tensor([0, 2, 4, 5])
    order = torch.tensor([0, 4, 1, 3, 2], dtype=torch.int32)
    order_docs = torch.tensor([0, 1, 0, 1, 1], dtype=torch.int32)
    rowmap = torch.tensor([0, 1])
    assert kernels.select_ivf(voff, order, order_docs, torch.tensor([1]), rowmap, 2)[0].tolist() == [1, 3]
    with pytest.raises(IndexError):
        kernels.select_ivf(voff, order, order_docs, torch.tensor([3]), rowmap, 2)  # no centroid 3
    with pytest.raises(IndexError):
        kernels.select_ivf(voff, order, order_docs, torch.tensor([0]), torch.tensor([0, 2]), 2)  # row 2 of 2
    with pytest.raises(IndexError):
        kernels.select_ivf(voff, order, torch.tensor([0, 5, 0, 1, 1], dtype=torch.int32), torch.tensor([0]), rowmap, 2)
    with pytest.raises(IndexError):
        kernels.centroid_max(voff, order_docs, torch.tensor([3]), rowmap, 2, torch.zeros(3, 4))  # no centroid 3
    with pytest.raises(IndexError):
        kernels.centroid_max(voff, order_docs, torch.tensor([0]), torch.tensor([0, 2]), 2, torch.zeros(3, 4))
    with pytest.raises(IndexError):
        kernels.select_candidates(voff, order_docs, torch.tensor([0]), torch.ones(1, dtype=torch.bool))  # doc 1 of 1
    with pytest.raises(IndexError):
        kernels.select_candidates(voff, order_docs, torch.tensor([-1]), torch.ones(2, dtype=torch.bool))


@needs_kernel
def test_trusted_scoring_refuses_a_segment_whose_tables_disagree(corpus, doc_ids, queries):
    """Selections check ids against the codes; the first trusted call checks that the other tables
    (originals, residuals, token ids, offsets) hold as many vectors (a crafted file could differ)."""
    index = build(corpus.docs, doc_ids, keep_vectors=True)
    seg = index.snapshot.segments[0]
    seg.vectors = seg.vectors[:-1]
    with pytest.raises(IndexError, match="disagree"):
        seg.score_max(index.snapshot.codec, torch.tensor([0]), torch.tensor([0]), queries[0], torch.zeros(1, 16),
                      trusted=True)  # fmt: skip


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
def test_segment_refuses_centroid_ids_beyond_the_codebook(corpus, doc_ids, queries):
    index = build(corpus.docs, doc_ids)
    snap = index.snapshot
    seg = snap.segments[0]
    seg.cache.pop("codes_range", None)
    seg.codes[0] = snap.codec.ncentroids  # a corrupt code (checksums normally catch this on open)
    try:
        with pytest.raises(IndexError, match="centroid id"):
            seg.score_max(snap.codec, torch.tensor([1]), torch.tensor([0]), queries[0], torch.zeros(1, 16), full=False)
    finally:
        seg.cache.pop("codes_range", None)


@needs_kernel
@pytest.mark.usefixtures("each_kernel")
@pytest.mark.parametrize("keep_vectors", [True, False])
def test_rerank_and_batched_exact_agree_with_the_torch_path(indexes, queries, doc_ids, monkeypatch, keep_vectors):
    index = indexes[keep_vectors]
    candidates = [doc_ids[i::7][:60] for i in range(queries.shape[0])]
    fused = index.rerank(queries, candidates, k=20)
    batch = index.search(queries[:3], k=10, method="exact")  # a few queries: one kernel pass per query
    monkeypatch.setattr(kernels, "FUSED", None)
    assert [[h.id for h in row] for row in index.rerank(queries, candidates, k=20)] == [
        [h.id for h in row] for row in fused
    ]
    assert [[h.id for h in row] for row in index.search(queries[:3], k=10, method="exact")] == [
        [h.id for h in row] for row in batch
    ]
