"""PackedDocuments: variable-length token vectors of many documents in one flat array."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class PackedDocuments:
    """Token vectors of N documents, concatenated.

    vectors: [T, dim] (fp16 for storage), token_ids: [T] int32 (-1 where a vector is not a
    single token, e.g. a cluster representative), lengths: [N] int64.
    """

    vectors: torch.Tensor
    token_ids: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D [tokens, dim], got shape {tuple(self.vectors.shape)}")
        if self.token_ids.shape[0] != self.vectors.shape[0]:
            raise ValueError("token_ids and vectors disagree on the number of tokens")
        if int(self.lengths.sum()) != self.vectors.shape[0]:
            raise ValueError("lengths do not add up to the number of vectors")

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def offsets(self) -> torch.Tensor:
        """Start of each document in the flat arrays ([N+1], last entry = total tokens)."""
        return torch.nn.functional.pad(torch.cumsum(self.lengths, 0), (1, 0))

    def to(self, device: str | torch.device) -> PackedDocuments:
        """The same documents on ``device`` (itself when already there)."""
        dev = torch.device(device)
        if self.vectors.device.type == dev.type and self.lengths.device.type == dev.type:
            return self
        return PackedDocuments(self.vectors.to(dev), self.token_ids.to(dev), self.lengths.to(dev))

    def doc(self, i: int) -> torch.Tensor:
        off = self.offsets
        return self.vectors[off[i] : off[i + 1]]

    def select(self, indices: list[int] | torch.Tensor) -> PackedDocuments:
        """A new PackedDocuments holding only the given documents, in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        off = self.offsets
        lengths = self.lengths[idx]
        if len(idx) == 0:
            return PackedDocuments(self.vectors[:0], self.token_ids[:0], lengths)
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        pos = torch.repeat_interleave(off[idx], lengths) + within
        return PackedDocuments(self.vectors[pos], self.token_ids[pos], lengths)

    @staticmethod
    def concat(parts: list[PackedDocuments]) -> PackedDocuments:
        if not parts:
            raise ValueError("nothing to concatenate")
        return PackedDocuments(
            torch.cat([p.vectors for p in parts]),
            torch.cat([p.token_ids for p in parts]),
            torch.cat([p.lengths for p in parts]),
        )

    def padded(self, start: int, stop: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Documents start..stop as a padded [n, Lmax, dim] tensor and a [n, Lmax] bool mask."""
        lengths = self.lengths[start:stop]
        n = int(lengths.shape[0])
        lmax = int(lengths.max()) if n else 0
        base = int(self.lengths[:start].sum())
        starts = base + torch.cumsum(lengths, 0) - lengths
        ar = torch.arange(lmax)
        mask = ar[None, :] < lengths[:, None]
        pos = (starts[:, None] + ar[None, :]).clamp_max(max(self.vectors.shape[0] - 1, 0))
        out = self.vectors[pos].to(dtype)
        out[~mask] = 0
        return out, mask

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file(
            {
                "vectors": self.vectors.contiguous(),
                "token_ids": self.token_ids.contiguous(),
                "lengths": self.lengths.contiguous(),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> PackedDocuments:
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["vectors"], t["token_ids"], t["lengths"])
