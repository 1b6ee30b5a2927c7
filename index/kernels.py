"""Small vectorised building blocks shared by the search methods (CPU or CUDA tensors)."""

from __future__ import annotations

import numpy as np
import torch


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
    return torch.repeat_interleave(shift, lengths, output_size=total) + torch.arange(
        total, device=starts.device
    )


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
    best = sims.amax(1)
    if bool((lengths == 0).any()):
        best[lengths.to(best.device) == 0] = 0.0
    return best @ weights if weights is not None else best.sum(1)

