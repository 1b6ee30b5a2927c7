"""Small vectorised building blocks shared by the search methods (CPU or CUDA tensors)."""

from __future__ import annotations

import os

import numpy as np
import torch


def _load_fused():
    """The compiled kernel module (index/_fused.c), or None where it was not built or the CPU has neither
    AVX-512F nor AVX2+FMA+F16C. $TESSERA_FUSED: unset or "1" for the best kernel of this CPU, "0" for
    the torch path (A/B runs), "avx2" or "avx512" to pick one (ignored where the CPU cannot run it)."""
    choice = os.environ.get("TESSERA_FUSED", "1")
    if choice == "0":
        return None
    try:
        from tessera.index import _fused
    except ImportError:
        return None
    if choice in ("avx2", "avx512"):
        _fused.select(choice)
    return _fused if _fused.kernel() != "none" else None


FUSED = _load_fused()


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


def scatter_max(best: torch.Tensor, rows: torch.Tensor, sims: torch.Tensor) -> None:
    """In place ``best[rows[i]] = max(best[rows[i]], sims[i])`` (torch's scatter-max)."""
    best.scatter_reduce_(0, rows.to(best.device).long()[:, None].expand(-1, sims.shape[1]), sims, "amax")


def fused_kernel() -> str:
    """Name of the compiled kernel in use ("avx512", "avx2"), or "torch" where there is none."""
    return FUSED.kernel() if FUSED is not None else "torch"


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


def _run_fused(fn, table_rows: int, pos: torch.Tensor, rows: torch.Tensor, query: torch.Tensor, best: torch.Tensor):
    """Calls kernel ``fn(*operands)`` after checking positions and rows and padding the query tokens to
    a multiple of 16 (zero query columns; the padded best columns are dropped)."""
    pos = pos.to(torch.int64).contiguous()
    rows = rows.to(torch.int64).contiguous()
    m = best.shape[0]
    if int(pos.min()) < 0 or int(pos.max()) >= table_rows or int(rows.min()) < 0 or int(rows.max()) >= m:
        raise IndexError("fused scoring: a vector position or an output row is out of range")
    lq, dim = query.shape
    lqp = -(-lq // 16) * 16
    q_t = torch.zeros(dim, lqp)
    q_t[:, :lq] = query.T
    direct = best.dtype == torch.float32 and best.is_contiguous() and lqp == lq
    out = best if direct else torch.full((m, lqp), float("-inf"))
    if not direct:
        out[:, :lq] = best
    fn(dim, pos.data_ptr(), rows.data_ptr(), pos.numel(), q_t.data_ptr(), lqp, out.data_ptr())
    if not direct:
        best.copy_(out[:, :lq])


def gather_max(vectors: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor, query: torch.Tensor, best: torch.Tensor):
    """In place: ``best[rows[i]] = max(best[rows[i]], vectors[pos[i]] @ query.T)``.

    vectors [T, dim] (fp16 originals, or any float table), pos and rows [n] integer, query [Lq, dim]
    float32, best [m, Lq] float32. On CPU with fp16 vectors this is one pass of the compiled kernel
    (no [n, dim] fp32 copy, no [n, Lq] similarity matrix; one thread, the GIL released); elsewhere
    gather, matmul and scatter-max in torch. Both give the same values up to float rounding (the order
    of the sums differs)."""
    if pos.numel() == 0:
        return
    if fused_ok(vectors, query) and best.device.type == "cpu":
        ptr = vectors.data_ptr()
        _run_fused(lambda *a: FUSED.gather_max(ptr, *a), vectors.shape[0], pos, rows, query, best)
        return
    scatter_max(best, rows, take(vectors, pos.to(vectors.device)).to(best.device).float() @ query.T)


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
    _run_fused(lambda *a: FUSED.gather_max_codes(*head, *a), codes.shape[0], pos, rows, query, best)
    return True
