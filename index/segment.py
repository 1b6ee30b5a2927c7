"""Immutable segments: the compressed token vectors of a batch of documents plus their inverted lists.

A segment never changes after it is built; deletions are tombstones kept beside it (in the snapshot
and the manifest) and a merge writes a new segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tessera.index.codec import ResidualCodec, StopCheck
from tessera.index.kernels import gather_max, padded_positions, ranges, take
from tessera.index.storage import read_arrays, write_arrays
from tessera.packed import PackedDocuments


def _encode_ids(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    raw = [s.encode("utf-8") for s in ids]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in raw], out=offsets[1:])
    return np.frombuffer(b"".join(raw), dtype=np.uint8).copy(), offsets


def _decode_ids(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = blob.tobytes()
    return [data[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]


def build_ivf(codes: torch.Tensor, lengths: torch.Tensor, ncentroids: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverted lists centroid -> local documents holding it (CSR: offsets [C+1], docs int32)."""
    n = int(lengths.shape[0])
    if codes.numel() == 0:
        return torch.zeros(ncentroids + 1, dtype=torch.int64), torch.empty(0, dtype=torch.int32)
    doc_of = torch.repeat_interleave(torch.arange(n, dtype=torch.int64, device=codes.device), lengths)
    keys = torch.unique(codes.long() * n + doc_of)
    cent, docs = keys // n, keys % n
    offsets = torch.zeros(ncentroids + 1, dtype=torch.int64, device=codes.device)
    offsets[1:] = torch.cumsum(torch.bincount(cent, minlength=ncentroids), 0)
    return offsets, docs.to(torch.int32)


@dataclass(eq=False)
class Segment:
    """Compressed documents of one segment. ``file`` is its manifest entry once written to disk."""

    name: str
    ids: list[str]
    lengths: torch.Tensor  # int64 [N]
    codes: torch.Tensor  # int32 [T]
    residuals: torch.Tensor  # uint8 [T, dim*nbits/8]
    token_ids: torch.Tensor  # int32 [T]
    ivf_offsets: torch.Tensor  # int64 [C+1]
    ivf_docs: torch.Tensor  # int32 [nnz]
    error: float  # mean squared reconstruction error of its vectors
    vectors: torch.Tensor | None = None  # optional fp16 originals [T, dim] for exact reranking
    file: dict | None = None
    offsets: torch.Tensor = field(init=False)
    cache: dict = field(init=False, default_factory=dict)  # derived data (the segment never changes)

    def __post_init__(self) -> None:
        self.offsets = torch.nn.functional.pad(torch.cumsum(self.lengths, 0), (1, 0))

    @property
    def n_docs(self) -> int:
        return len(self.ids)

    @property
    def n_vectors(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed index (codes, residuals, token ids, lengths, inverted lists)."""
        parts = (self.lengths, self.codes, self.residuals, self.token_ids, self.ivf_offsets, self.ivf_docs)
        return sum(t.numel() * t.element_size() for t in parts)

    @property
    def full_nbytes(self) -> int:
        """Bytes of the optional full-precision vectors."""
        return 0 if self.vectors is None else self.vectors.numel() * self.vectors.element_size()

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        name: str,
        ids: list[str],
        docs: PackedDocuments,
        codec: ResidualCodec,
        keep_vectors: bool = False,
        should_stop: StopCheck = None,
    ) -> Segment:
        codes, residuals = codec.compress(docs.vectors, should_stop)
        sample = docs.vectors[:: max(1, docs.vectors.shape[0] // 8192)]
        error = codec.reconstruction_error(sample)
        ivf_offsets, ivf_docs = build_ivf(codes, docs.lengths, codec.ncentroids)
        return cls(
            name,
            list(ids),
            docs.lengths.to(torch.int64).clone(),
            codes,
            residuals,
            docs.token_ids.to(torch.int32).clone(),
            ivf_offsets,
            ivf_docs,
            error,
            docs.vectors.to(torch.float16).contiguous() if keep_vectors else None,
        )

    @classmethod
    def from_parts(cls, name: str, parts: list[tuple[Segment, torch.Tensor]], codec: ResidualCodec) -> Segment:
        """Concatenate the given local documents of several segments (encoded by ``codec``) into a new
        one. Stored originals are kept when any part has them (those of the other parts are then
        decompressed): they are kept for a re-training to come, which must not lose them."""
        ids: list[str] = []
        lengths, codes, residuals, token_ids, errors, positions = [], [], [], [], [], []
        for seg, local in parts:
            local = local.to(seg.device, torch.int64)
            ids.extend(seg.ids[i] for i in local.tolist())
            pos = seg.positions(local)
            lengths.append(seg.lengths[local])
            codes.append(seg.codes[pos])
            residuals.append(seg.residuals[pos])
            token_ids.append(seg.token_ids[pos])
            positions.append(pos)
            errors.append((seg.error, int(pos.numel())))
        dev = parts[0][0].device if parts else torch.device("cpu")
        lengths_t = torch.cat(lengths) if lengths else torch.empty(0, dtype=torch.int64, device=dev)
        codes_t = torch.cat(codes) if codes else torch.empty(0, dtype=torch.int32, device=dev)
        total = sum(w for _, w in errors)
        error = sum(e * w for e, w in errors) / total if total else 0.0
        ivf_offsets, ivf_docs = build_ivf(codes_t, lengths_t, codec.ncentroids)
        vectors = None
        if any(seg.vectors is not None for seg, _ in parts):
            vectors = torch.cat([seg.originals(codec, p) for (seg, _), p in zip(parts, positions, strict=True)])
        width = parts[0][0].residuals.shape[1] if parts else 0
        return cls(
            name,
            ids,
            lengths_t,
            codes_t,
            torch.cat(residuals) if residuals else torch.empty(0, width, dtype=torch.uint8),
            torch.cat(token_ids) if token_ids else torch.empty(0, dtype=torch.int32),
            ivf_offsets,
            ivf_docs,
            error,
            vectors,
        )

    # -- devices ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device: str | torch.device) -> Segment:
        """This segment with every tensor on ``device`` (itself when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Segment(
            self.name,
            self.ids,
            move(self.lengths),
            move(self.codes),
            move(self.residuals),
            move(self.token_ids),
            move(self.ivf_offsets),
            move(self.ivf_docs),
            self.error,
            move(self.vectors),
            self.file,
        )

    # -- access -----------------------------------------------------------------------------------
    def positions(self, local: torch.Tensor) -> torch.Tensor:
        """Flat vector positions of the given local documents, in order (on the segment's device)."""
        local = local.to(self.device, torch.int64)
        if local.numel() == 0:
            return torch.empty(0, dtype=torch.int64, device=self.device)
        lengths = self.lengths[local]
        return ranges(self.offsets[local], lengths)

    def vector_ivf(self, ncentroids: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inverted lists centroid -> vector positions, cached: (offsets [C+1], positions in centroid
        order [T], the local document of each of those positions [T])."""
        if "vector_ivf" not in self.cache:
            order = torch.argsort(self.codes, stable=True)
            if self.n_vectors < 2**31:
                order = order.to(torch.int32)  # 4 bytes per vector in memory instead of 8
            counts = torch.bincount(self.codes.long(), minlength=ncentroids)
            docs = self.doc_of(order).to(torch.int32)
            offsets = torch.nn.functional.pad(torch.cumsum(counts, 0), (1, 0))
            self.cache["vector_ivf"] = (offsets, order, docs)
        return self.cache["vector_ivf"]

    def doc_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Local document of each vector position."""
        return torch.searchsorted(self.offsets, positions.to(self.device), right=True) - 1

    def padded(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([m, Lmax] vector positions padded by repeating each document's last token, lengths [m])."""
        local = local.to(self.device, torch.int64)
        lengths = self.lengths[local]
        pos = padded_positions(self.offsets[local], lengths)
        return pos.clamp_(0, max(self.n_vectors - 1, 0)), lengths  # empty documents point anywhere

    def originals(self, codec: ResidualCodec, pos: torch.Tensor) -> torch.Tensor:
        """fp16 vectors [n, dim] at the given positions, on the segment's device: the stored originals
        when kept, else decompressed (in chunks, so that no float32 copy of them all is made)."""
        if self.vectors is not None:
            return take(self.vectors, pos)
        if not pos.numel():
            return torch.empty(0, codec.dim, dtype=torch.float16, device=self.device)
        return torch.cat(
            [
                codec.decompress(take(self.codes, p), take(self.residuals, p)).half().to(self.device)
                for p in pos.split(1 << 16)
            ]
        )

    def padded_vectors(self, codec: ResidualCodec, local: torch.Tensor, full: bool = True):
        """([m, Lmax, dim] float32 vectors on the codec's device, lengths [m]); ``full`` uses the stored
        originals when the segment keeps them, otherwise residuals are decompressed."""
        pos, lengths = self.padded(local)
        flat = pos.view(-1)
        if self.n_vectors == 0:  # only empty documents: nothing to gather (their mask is all False)
            return torch.zeros(pos.shape[0], pos.shape[1], codec.dim, device=codec.device), lengths
        if full and self.vectors is not None:
            vecs = take(self.vectors, flat).to(codec.device).float()
        else:
            vecs = codec.decompress(take(self.codes, flat), take(self.residuals, flat))
        return vecs.view(pos.shape[0], pos.shape[1], -1), lengths

    def score_max(
        self,
        codec: ResidualCodec,
        pos: torch.Tensor,
        rows: torch.Tensor,
        query: torch.Tensor,
        best: torch.Tensor,
        full: bool = True,
        trusted: bool = False,
        bf16: bool = False,
    ) -> None:
        """In place ``best[rows[i]] = max(best[rows[i]], v_i @ query.T)`` for the vectors v_i at positions
        ``pos``: the stored originals when kept (and ``full``), else decompressed residuals; fused into
        one pass on CPU (``tessera.index.kernels``). ``trusted``: positions and rows come from the
        ``kernels.select_*`` functions over this segment's tables (already checked). ``bf16``: query and
        vectors rounded to bfloat16 (``kernels.gather_max``)."""
        if trusted and "tables_agree" not in self.cache:  # selections check ids against the codes' length
            n = self.n_vectors
            tables = [t for t in (self.vectors, self.residuals, self.token_ids) if t is not None]
            if any(t.shape[0] != n for t in tables) or int(self.offsets[-1]) != n:
                raise IndexError(f"segment {self.name}: its tables disagree on the number of vectors")
            self.cache["tables_agree"] = True
        if full and self.vectors is not None:
            gather_max(self.vectors, pos.to(self.device), rows, query, best, trusted, bf16)
            return
        if "codes_range" not in self.cache:  # the compiled kernel trusts centroid ids: check them once
            n = self.codes.numel()
            self.cache["codes_range"] = (int(self.codes.min()), int(self.codes.max())) if n else (0, -1)
        low, high = self.cache["codes_range"]
        if low < 0 or high >= codec.ncentroids:
            raise IndexError(f"segment {self.name}: centroid ids {low}..{high} outside 0..{codec.ncentroids - 1}")
        codec.score_max(self.codes, self.residuals, pos.to(self.device), rows, query, best, trusted, bf16)

    def decompress(
        self, codec: ResidualCodec, local: torch.Tensor, full: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 vectors of the given documents, their lengths); ``full`` as in ``padded_vectors``."""
        pos = self.positions(local)
        lengths = self.lengths[local.to(self.device, torch.int64)]
        if full and self.vectors is not None:
            return take(self.vectors, pos).to(codec.device).float(), lengths
        return codec.decompress(take(self.codes, pos), take(self.residuals, pos)), lengths

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: Path) -> dict:
        blob, id_offsets = _encode_ids(self.ids)
        arrays = {
            "ids_blob": blob,
            "ids_offsets": id_offsets,
            "lengths": self.lengths.cpu().numpy(),
            "codes": self.codes.cpu().numpy(),
            "residuals": self.residuals.cpu().numpy(),
            "token_ids": self.token_ids.cpu().numpy(),
            "ivf_offsets": self.ivf_offsets.cpu().numpy(),
            "ivf_docs": self.ivf_docs.cpu().numpy(),
        }
        if self.vectors is not None:
            arrays["vectors"] = self.vectors.cpu().numpy()
        self.file = write_arrays(folder / f"{self.name}.seg", arrays, {"error": self.error})
        return self.file

    @classmethod
    def load(cls, folder: Path, name: str, entry: dict, verify: bool = True) -> Segment:
        meta, a = read_arrays(folder, entry, verify)
        t = {k: torch.from_numpy(v) for k, v in a.items() if k not in ("ids_blob", "ids_offsets")}
        seg = cls(
            name,
            _decode_ids(a["ids_blob"], a["ids_offsets"]),
            t["lengths"],
            t["codes"],
            t["residuals"],
            t["token_ids"],
            t["ivf_offsets"],
            t["ivf_docs"],
            float(meta["error"]),
            t.get("vectors"),
            file=entry,
        )
        return seg
