"""Immutable snapshots: what a search sees. Writers build a new snapshot and publish it atomically."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from tessera.index.codec import ResidualCodec
from tessera.index.segment import Segment


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Segments, their live-document masks and the id -> (segment, local document) map.

    Documents are numbered globally by segment order: global = ``bases[s] + local``.
    Nothing in a published snapshot is ever modified; derived data is cached in ``cache``.
    """

    codec: ResidualCodec | None
    segments: tuple[Segment, ...]
    alive: tuple[torch.Tensor, ...]
    locations: dict[str, tuple[int, int]]
    generation: int = 0
    cache: dict = field(default_factory=dict, compare=False)

    @property
    def bases(self) -> torch.Tensor:
        if "bases" not in self.cache:
            sizes = torch.tensor([s.n_docs for s in self.segments], dtype=torch.int64)
            self.cache["bases"] = torch.nn.functional.pad(torch.cumsum(sizes, 0), (1, 0))
        return self.cache["bases"]

    @property
    def total_docs(self) -> int:
        """Documents in all segments, live or not (the size of the global numbering)."""
        return int(self.bases[-1])

    @property
    def alive_all(self) -> torch.Tensor:
        if "alive_all" not in self.cache:
            self.cache["alive_all"] = (
                torch.cat(self.alive) if self.alive else torch.zeros(0, dtype=torch.bool)
            )
        return self.cache["alive_all"]

    @property
    def lengths_all(self) -> torch.Tensor:
        """Vector count of every document in global numbering."""
        if "lengths_all" not in self.cache:
            parts = [s.lengths.cpu() for s in self.segments]
            self.cache["lengths_all"] = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        return self.cache["lengths_all"]

    @property
    def live_vectors(self) -> list[int]:
        """Vectors of the live documents of each segment."""
        if "live_vectors" not in self.cache:
            self.cache["live_vectors"] = [
                int(seg.lengths[a.to(seg.lengths.device)].sum())
                for seg, a in zip(self.segments, self.alive, strict=True)
            ]
        return self.cache["live_vectors"]

    def global_index(self, ids: Collection[str]) -> torch.Tensor:
        """Global numbers of the given ids that exist (unknown ids are skipped)."""
        bases = self.bases.tolist()
        out = [bases[s] + i for s, i in (self.locations.get(x, (None, None)) for x in ids) if s is not None]
        return torch.tensor(out, dtype=torch.int64)

    def mask(self, allowed_ids: Collection[str] | None) -> torch.Tensor:
        """Global bool mask of the documents a search may return."""
        if allowed_ids is None:
            return self.alive_all
        m = torch.zeros(self.total_docs, dtype=torch.bool)
        m[self.global_index(allowed_ids)] = True
        return m

    def locate(self, gidx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(segment numbers, local document numbers) of global document numbers."""
        seg = torch.searchsorted(self.bases, gidx, right=True) - 1
        return seg, gidx - self.bases[seg]

    def id_of(self, g: int) -> str:
        s = int(torch.searchsorted(self.bases, torch.tensor([g]), right=True)[0]) - 1
        return self.segments[s].ids[g - int(self.bases[s])]
