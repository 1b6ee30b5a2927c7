"""Small vectorised building blocks shared by the search methods (CPU or CUDA tensors)."""

from __future__ import annotations

import os

import numpy as np
import torch


def _load_fused():
    """The compiled kernel module (index/_fused.c), or None where it was not built or the CPU has neither
    AVX-512F nor AVX2+FMA+F16C. $TESSERA_FUSED: unset or "1" for the best kernel of this CPU, "0" for
    the torch path (A/B runs), "avx2" or "avx512" to pick one (ignored where the CPU cannot run it).
    $TESSERA_BF16=0 leaves out the AVX512-BF16 kernel, so that ``plaid``'s ``bf16`` defaults to false."""
    choice = os.environ.get("TESSERA_FUSED", "1")
    if choice == "0":
        return None
    try:
        from tessera.index import _fused
    except ImportError:
        return None
    if choice in ("avx2", "avx512"):
        _fused.select(choice)
    if os.environ.get("TESSERA_BF16", "1") == "0":
        _fused.bf16(False)
    return _fused if _fused.kernel() != "none" else None


FUSED = _load_fused()
MAX_THREADS = 2  # threads of one kernel call (never more than torch.get_num_threads()): 1 or 2


def _threads() -> int:
    """Threads for one kernel call: a second one only where torch may use one."""
    return min(MAX_THREADS, torch.get_num_threads())


def filled(rows: int, cols: int, value: float = float("-inf"), device: torch.device | str = "cpu") -> torch.Tensor:
    """A float32 [rows, cols] tensor full of ``value``. On CPU it is filled by numpy, on one thread: a
    torch fill this large would wake torch's OpenMP workers, which then spin on the other cores for a
    while and slow the kernel's own second thread (``MAX_THREADS``)."""
    if torch.device(device).type == "cpu":
        return torch.from_numpy(np.full((rows, cols), value, dtype=np.float32))
    return torch.full((rows, cols), value, device=device)


def take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``table[index]``. On CPU numpy's take is about twice as fast as torch's gathers."""
    if table.device.type == "cpu":
        return torch.from_numpy(np.take(table.numpy(), index.numpy(), axis=0))
    return table.index_select(0, index)


def ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, s + n) for each (s, n): the positions of several CSR rows."""
    lengths = lengths.to(torch.int64)
    total = int(lengths.sum())
    if total == 0:
        return torch.empty(0, dtype=torch.int64, device=starts.device)
    shift = starts.to(torch.int64) - (torch.cumsum(lengths, 0) - lengths)
    return torch.repeat_interleave(shift, lengths, output_size=total) + torch.arange(total, device=starts.device)


def _ptr(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """(t as a contiguous CPU tensor of ``dtype``, kept alive by the caller, and its address)."""
    t = t.to("cpu", dtype).contiguous()
    return t, t.data_ptr()


def select_candidates(
    ivf_offsets: torch.Tensor, ivf_docs: torch.Tensor, cells: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidates, rowmap): the documents (in increasing order) of the inverted lists (``ivf_offsets``
    [C+1], ``ivf_docs``) of centroids ``cells`` (repeats allowed) that ``allowed`` [n_docs] (bool)
    admits, and each document's rank among them (-1 for the others) [n_docs]. One pass in C on CPU
    (ids checked there), torch elsewhere."""
    n_docs = allowed.numel()
    if FUSED is not None and ivf_offsets.device.type == "cpu" and ivf_docs.dtype == torch.int32:
        off_c, off_p = _ptr(ivf_offsets, torch.int64)
        cells_c, cells_p = _ptr(cells, torch.int64)
        allowed_c, allowed_p = _ptr(allowed, torch.bool)
        docs_c = ivf_docs.contiguous()
        cand, rowmap = torch.empty(n_docs, dtype=torch.int64), torch.empty(n_docs, dtype=torch.int64)
        n = FUSED.select_candidates(
            off_p, off_c.numel() - 1, docs_c.data_ptr(), docs_c.numel(), cells_p, cells_c.numel(), allowed_p,
            n_docs, cand.data_ptr(), rowmap.data_ptr(),
        )  # fmt: skip
        return cand[:n], rowmap
    dev = ivf_offsets.device  # the segment's device; results there
    off, cells, allowed = ivf_offsets, cells.to(dev), allowed.to(dev)
    mark = torch.zeros(n_docs, dtype=torch.bool, device=dev)
    mark[ivf_docs.to(dev)[ranges(off[cells], off[cells + 1] - off[cells])].long()] = True
    cand = (mark & allowed).nonzero().flatten()
    return cand, rank_map(cand, n_docs)


def rank_map(docs: torch.Tensor, n_docs: int) -> torch.Tensor:
    """[n_docs] int64: the rank of each document among ``docs`` (distinct), -1 for the others."""
    rowmap = torch.full((n_docs,), -1, dtype=torch.int64, device=docs.device)
    rowmap[docs] = torch.arange(docs.numel(), device=docs.device)
    return rowmap


def select_ivf(
    voff: torch.Tensor,
    order: torch.Tensor,
    order_docs: torch.Tensor,
    kept: torch.Tensor,
    rowmap: torch.Tensor,
    m: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, output rows) of the vectors of centroids ``kept`` whose document d is selected
    (``rowmap[d] >= 0``, the row, below m), ordered by row (stable: centroid order within a row), so
    that the scoring reads each document's vectors together rather than all over the table.
    ``voff`` [C+1] / ``order`` / ``order_docs`` [T] are a segment's centroid -> vector inverted lists
    (``Segment.vector_ivf``). In C on CPU (ids are checked there, so the kernel may trust the result),
    torch elsewhere."""
    if FUSED is not None and voff.device.type == "cpu" and order.dtype == order_docs.dtype == torch.int32:
        voff_c, voff_p = _ptr(voff, torch.int64)
        kept_c, kept_p = _ptr(kept, torch.int64)
        map_c, map_p = _ptr(rowmap, torch.int64)
        order_c, order_docs_c = order.contiguous(), order_docs.contiguous()
        args = (voff_p, order_c.data_ptr(), order_docs_c.data_ptr(), order_c.numel(), kept_p, kept_c.numel(),
                voff_c.numel() - 1, map_p, map_c.numel(), m)  # fmt: skip
        cap = FUSED.select_ivf(*args, 0, 0, -1)
        pos, rows = torch.empty(cap, dtype=torch.int64), torch.empty(cap, dtype=torch.int64)
        n = FUSED.select_ivf(*args, pos.data_ptr(), rows.data_ptr(), cap)
        return pos[:n], rows[:n]
    dev = rowmap.device
    voff = voff.to(dev)
    idx = ranges(voff[kept], voff[kept + 1] - voff[kept])
    rows = take(rowmap, take(order_docs, idx.to(order_docs.device)).to(dev).long())
    inside = rows >= 0
    rows = rows[inside]
    by_row = torch.sort(rows, stable=True).indices
    return take(order, idx[inside][by_row].to(order.device)).long(), rows[by_row]


def centroid_max(
    ivf_offsets: torch.Tensor,
    ivf_docs: torch.Tensor,
    kept: torch.Tensor,
    rowmap: torch.Tensor,
    m: int,
    S: torch.Tensor,
) -> torch.Tensor:
    """PLAID's centroid interaction with pruning: [m, Lq], for each selected document (``rowmap[d] >= 0``,
    its row) and query token, the best score ``S`` [C, Lq] among the centroids ``kept`` that hold one
    of its vectors (-inf if none), from the centroid -> document inverted lists (``ivf_offsets`` [C+1],
    ``ivf_docs``). No vector is read: one pass over the lists in C on CPU, torch elsewhere."""
    lq = S.shape[1]
    if S.shape[0] != ivf_offsets.numel() - 1:
        raise ValueError(f"centroid_max: {S.shape[0]} centroid scores for {ivf_offsets.numel() - 1} inverted lists")
    out = filled(m, lq, device=S.device)
    if (
        FUSED is not None
        and ivf_offsets.device.type == S.device.type == "cpu"
        and ivf_docs.dtype == torch.int32
        and S.dtype == torch.float32
        and S.stride(1) == 1
    ):
        off_c, off_p = _ptr(ivf_offsets, torch.int64)
        kept_c, kept_p = _ptr(kept, torch.int64)
        map_c, map_p = _ptr(rowmap, torch.int64)
        docs_c = ivf_docs.contiguous()
        FUSED.centroid_max(
            off_p, docs_c.numel(), docs_c.data_ptr(), kept_p, kept_c.numel(), off_c.numel() - 1, map_p,
            map_c.numel(), m, S.data_ptr(), lq, S.stride(0), out.data_ptr(),
        )  # fmt: skip
        return out
    dev = S.device
    off, kept = ivf_offsets.to(dev), kept.to(dev)
    counts = off[kept + 1] - off[kept]
    idx = ranges(off[kept], counts)
    rows = take(rowmap, take(ivf_docs, idx.to(ivf_docs.device)).to(dev).long())
    cents = torch.repeat_interleave(kept, counts, output_size=idx.numel())
    inside = rows >= 0
    scatter_max(out, rows[inside], S[cents[inside]])
    return out


def select_tokens(
    offsets: torch.Tensor,
    locs: torch.Tensor,
    codes: torch.Tensor,
    cmask: torch.Tensor | None,
    rows: torch.Tensor | None = None,
    m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, output rows) of the vectors of local documents ``locs`` (CSR ``offsets``), document i
    going to row ``rows[i]`` (default i; below m, default len(locs)), keeping those whose centroid
    ``codes[p]`` has ``cmask`` set ([C] bool; None keeps all). Positions are document-major. One pass
    in C on CPU (ids checked there), torch elsewhere."""
    m = locs.numel() if m is None else m
    if locs.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64, device=offsets.device)
        return empty, empty
    if FUSED is not None and offsets.device.type == "cpu" and codes.dtype == torch.int32:
        off_c, off_p = _ptr(offsets, torch.int64)
        locs_c, locs_p = _ptr(locs, torch.int64)
        rows_c, rows_p = _ptr(rows, torch.int64) if rows is not None else (None, 0)
        mask_c, mask_p = _ptr(cmask, torch.bool) if cmask is not None else (None, 0)
        codes_c = codes.contiguous()
        args = (off_p, off_c.numel() - 1, locs_p, locs_c.numel(), rows_p, m, codes_c.data_ptr(), codes_c.numel(),
                mask_p, mask_c.numel() if mask_c is not None else 0)  # fmt: skip
        cap = FUSED.select_tokens(*args, 0, 0, -1)
        pos, out_rows = torch.empty(cap, dtype=torch.int64), torch.empty(cap, dtype=torch.int64)
        n = FUSED.select_tokens(*args, pos.data_ptr(), out_rows.data_ptr(), cap)
        return pos[:n], out_rows[:n]
    dev = offsets.device
    locs = locs.to(dev, torch.int64)
    lengths = offsets[locs + 1] - offsets[locs]
    pos = ranges(offsets[locs], lengths)
    row_of = rows.to(dev, torch.int64) if rows is not None else torch.arange(locs.numel(), device=dev)
    out_rows = torch.repeat_interleave(row_of, lengths, output_size=pos.numel())
    if cmask is not None and pos.numel():
        pick = take(cmask, take(codes, pos).to(cmask.device).long()).to(dev)
        pos, out_rows = pos[pick], out_rows[pick]
    return pos, out_rows


def padded_positions(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[m, Lmax] positions of m documents; padding repeats each document's last token, which leaves
    any max over its tokens unchanged (documents without tokens point at their start)."""
    lmax = max(1, int(lengths.max())) if lengths.numel() else 1
    ar = torch.arange(lmax, device=starts.device)
    last = (lengths - 1).clamp_min(0)
    return starts[:, None] + torch.minimum(ar[None, :], last[:, None])


def padded_max_sum(sims: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """sims [m, Lmax, Lq] (padded by repetition) -> sum over query tokens of the max over document
    tokens [m]; documents without tokens score 0."""
    return sum_best(sims.amax(1), lengths, weights)


def sum_best(best: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """best [m, Lq] per-token maxima of m documents -> their (weighted) sums [m]; documents without
    tokens score 0."""
    if bool((lengths == 0).any()):
        best[lengths.to(best.device) == 0] = 0.0
    return best @ weights if weights is not None else best.sum(1)


def clamped_sum(best: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """[m] approximate scores of ``best`` [m, Lq] (PLAID's stages 2-3): a query token that no scored
    vector of the document matched (or matched negatively) contributes 0."""
    best = best.clamp_min(0)
    return best @ weights if weights is not None else best.sum(1)


def top_rows(best: torch.Tensor, n: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The ``n`` rows of ``best`` [m, Lq] with the largest ``clamped_sum``, in increasing order (all rows
    when m <= n; ties go to the lower row). In C on CPU (sums and a quickselect, no sort), torch
    elsewhere."""
    m, lq = best.shape
    if weights is not None and weights.numel() != lq:
        raise ValueError(f"top_rows: {weights.numel()} weights for {lq} query tokens")
    if (
        FUSED is not None
        and best.device.type == "cpu"
        and best.dtype == torch.float32
        and best.stride(1) == 1
        and (weights is None or weights.device.type == "cpu")
    ):
        w = weights.to(torch.float32).contiguous() if weights is not None else None
        out = torch.empty(min(n, m), dtype=torch.int64)
        got = FUSED.top_rows(best.data_ptr(), m, lq, best.stride(0), w.data_ptr() if w is not None else 0, n,
                             out.data_ptr())  # fmt: skip
        return out[:got]
    if n >= m:
        return torch.arange(m, device=best.device)
    order = torch.sort(clamped_sum(best, weights), descending=True, stable=True).indices  # ties: lower row first
    return order[:n].sort().values


def scatter_max(best: torch.Tensor, rows: torch.Tensor, sims: torch.Tensor) -> None:
    """In place ``best[rows[i]] = max(best[rows[i]], sims[i])`` (torch's scatter-max)."""
    best.scatter_reduce_(0, rows.to(best.device).long()[:, None].expand(-1, sims.shape[1]), sims, "amax")


def fused_kernel() -> str:
    """Name of the compiled kernel in use ("avx512", "avx2"; "+bf16" where it has an AVX512-BF16 one for
    ``bf16`` scoring, see ``bf16_fast``), or "torch" where there is none."""
    if FUSED is None:
        return "torch"
    return FUSED.kernel() + ("+bf16" if FUSED.bf16() else "")


def bf16_fast(device: torch.device | str) -> bool:
    """Whether scoring with ``bf16=True`` (``gather_max``, ``gather_max_codes``, ``scores``: query and
    vectors rounded to bfloat16, products summed in float32) is faster than float32 on ``device``: on CPUs with
    AVX512-BF16, where the compiled kernel multiplies two dims per instruction. Elsewhere it gives the
    same products at no gain (the operands are rounded, then multiplied in float32)."""
    return FUSED is not None and torch.device(device).type == "cpu" and FUSED.bf16()


def rounded(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float) rounded to bfloat16 precision (to nearest even), as float32."""
    return x.to(torch.bfloat16).float()


def products(a: torch.Tensor, b: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """``a @ b.T`` in float32; with ``bf16`` both operands rounded first (``rounded``): the torch path of
    ``bf16`` scoring."""
    return rounded(a) @ rounded(b).T if bf16 else a @ b.T


def fused_ok(vectors: torch.Tensor, query: torch.Tensor) -> bool:
    """Whether ``gather_max`` runs the compiled kernel for these operands."""
    return (
        FUSED is not None
        and vectors.device.type == "cpu"
        and query.device.type == "cpu"
        and vectors.dtype == torch.float16
        and vectors.dim() == 2
        and vectors.is_contiguous()
        and _fused_dim(vectors.shape[1])
    )


def _fused_dim(dim: int) -> bool:
    return dim % 16 == 0 and 0 < dim <= 1024


def _padded_query(query: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the query [Lq, dim] as contiguous float32 with zero rows up to a multiple of 16 tokens, that
    multiple): the layout the kernel reads."""
    lq, dim = query.shape
    lqp = -(-lq // 16) * 16
    if lqp == lq:
        return query.to(torch.float32).contiguous(), lqp
    q = torch.zeros(lqp, dim)
    q[:lq] = query
    return q, lqp


def _run_fused(
    fn,
    table_rows: int,
    pos: torch.Tensor,
    rows: torch.Tensor,
    query: torch.Tensor,
    best: torch.Tensor,
    trusted: bool,
    bf16: bool = False,
):
    """Calls kernel ``fn(*operands)`` after checking positions and rows (unless ``trusted``: made by the
    ``select_*`` functions, which check them) and padding the query tokens to a multiple of 16 (zero
    rows; the padded best columns are dropped). ``bf16``: see ``gather_max``."""
    pos = pos.to(torch.int64).contiguous()
    rows = rows.to(torch.int64).contiguous()
    m = best.shape[0]
    if not trusted and (
        int(pos.min()) < 0 or int(pos.max()) >= table_rows or int(rows.min()) < 0 or int(rows.max()) >= m
    ):
        raise IndexError("fused scoring: a vector position or an output row is out of range")
    lq, dim = query.shape
    q, lqp = _padded_query(query)
    direct = best.dtype == torch.float32 and best.is_contiguous() and lqp == lq
    out = best if direct else filled(m, lqp)
    if not direct:
        out[:, :lq] = best
    fn(dim, pos.data_ptr(), rows.data_ptr(), pos.numel(), q.data_ptr(), lqp, out.data_ptr(), m, _threads(), bf16)
    if not direct:
        best.copy_(out[:, :lq])


def gather_max(
    vectors: torch.Tensor,
    pos: torch.Tensor,
    rows: torch.Tensor,
    query: torch.Tensor,
    best: torch.Tensor,
    trusted: bool = False,
    bf16: bool = False,
):
    """In place: ``best[rows[i]] = max(best[rows[i]], vectors[pos[i]] @ query.T)``.

    vectors [T, dim] (fp16 originals, or any float table), pos and rows [n] integer, query [Lq, dim]
    float32, best [m, Lq] float32. On CPU with fp16 vectors this is one pass of the compiled kernel
    (no [n, dim] fp32 copy, no [n, Lq] similarity matrix; one thread, the GIL released); elsewhere
    gather, matmul and scatter-max in torch. Both give the same values up to float rounding (the order
    of the sums differs). ``trusted`` skips the kernel's bounds checks for positions and rows that the
    ``select_*`` functions made. ``bf16``: query and vectors are rounded to bfloat16 first (products
    summed in float32, on every path; faster where ``bf16_fast``), for pruning stages whose survivors
    are scored again in float32."""
    if pos.numel() == 0:
        return
    if fused_ok(vectors, query) and best.device.type == "cpu":
        ptr = vectors.data_ptr()
        _run_fused(lambda *a: FUSED.gather_max(ptr, *a), vectors.shape[0], pos, rows, query, best, trusted, bf16)
        return
    scatter_max(best, rows, products(take(vectors, pos.to(vectors.device)).to(best.device).float(), query, bf16))


def scores(
    table: torch.Tensor, query: torch.Tensor, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``S = table @ query.T`` [n, Lq] float32, ``S.amax(1)`` [n], ``S.argmax(0)`` [Lq]): the centroid
    scores of ``plaid``, each centroid's best and each query token's best centroid. One pass of the
    compiled kernel over the rows in order on CPU (no packing of the table as a BLAS product does,
    which matters when it has left the cache since the last query; the maxima in the same call);
    torch elsewhere. Same values either way (up to float rounding; first index on ties). ``bf16`` as
    in ``gather_max``."""
    lq, dim = query.shape
    n = table.shape[0]
    if (
        FUSED is not None
        and table.device.type == query.device.type == "cpu"
        and table.dtype == torch.float32
        and table.is_contiguous()
        and _fused_dim(dim)
        and n > 0
    ):
        q, lqp = _padded_query(query)
        out = torch.empty(n, lqp)  # written, not maxed into
        rowmax, argmax = torch.empty(n), torch.empty(lq, dtype=torch.int64)
        args = (out.data_ptr(), rowmax.data_ptr(), argmax.data_ptr(), _threads(), bf16)
        FUSED.scores(table.data_ptr(), dim, n, q.data_ptr(), lq, lqp, *args)
        return out[:, :lq], rowmax, argmax
    S = products(query, table, bf16).T  # a view of [Lq, n]: the reductions over n run along rows
    return S, S.amax(1), S.argmax(0)


def gather_max_codes(
    centroids: torch.Tensor,
    codes: torch.Tensor,
    packed: torch.Tensor,
    lut: torch.Tensor,
    normalize: bool,
    pos: torch.Tensor,
    rows: torch.Tensor,
    query: torch.Tensor,
    best: torch.Tensor,
    trusted: bool = False,
    bf16: bool = False,
) -> bool:
    """``gather_max`` over compressed vectors, rebuilt in the kernel: centroids [C, dim] float32,
    codes [T] int32 (each below C: the caller checks, see ``Segment.score_max``), packed [T, B] uint8,
    lut [B * 256, per] float32 (``ResidualCodec``'s layout). Returns False, doing nothing, where the
    compiled kernel cannot run (the caller decompresses)."""
    tables = (centroids, codes, packed, lut)  # read in place by the kernel (query and best are copied as needed)
    if (
        FUSED is None
        or any(t.device.type != "cpu" or not t.is_contiguous() for t in tables)
        or query.device.type != "cpu"
        or best.device.type != "cpu"
        or centroids.dtype != torch.float32
        or codes.dtype != torch.int32
        or packed.dtype != torch.uint8
        or lut.dtype != torch.float32
        or not _fused_dim(centroids.shape[1])
    ):
        return False
    if pos.numel() == 0:
        return True
    nbytes, per = packed.shape[1], lut.shape[1]
    head = (centroids.data_ptr(), codes.data_ptr(), packed.data_ptr(), nbytes, lut.data_ptr(), per, bool(normalize))
    _run_fused(lambda *a: FUSED.gather_max_codes(*head, *a), codes.shape[0], pos, rows, query, best, trusted, bf16)
    return True
