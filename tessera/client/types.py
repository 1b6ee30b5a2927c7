"""Plain result and input types of the client (never protobuf objects)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Document:
    """A document to upsert: external id, text, and a JSON object of metadata."""

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, doc: Document | Mapping | tuple) -> Document:
        """Accept a Document, a mapping with id/text/metadata, or an (id, text[, metadata]) tuple."""
        if isinstance(doc, Document):
            return doc
        if isinstance(doc, Mapping):
            return cls(doc["id"], doc["text"], doc.get("metadata") or {})
        if isinstance(doc, tuple) and len(doc) in (2, 3):
            return cls(doc[0], doc[1], doc[2] if len(doc) == 3 and doc[2] is not None else {})
        raise TypeError(f"cannot make a Document from {type(doc).__name__}; give id, text and metadata")


@dataclass(frozen=True)
class IndexSegment:
    name: str
    documents: int
    vectors: int


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str
    dim: int
    nbits: int
    default_method: str
    index_settings: Mapping[str, Any]
    documents: int
    pending_documents: int
    vectors: int
    created_at: datetime | None
    segments: tuple[IndexSegment, ...] = ()


@dataclass(frozen=True)
class StoredDocument:
    id: str
    text: str
    metadata: Mapping[str, Any]
    content_hash: str
    status: str
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class GetResult:
    documents: list[StoredDocument]
    missing_ids: list[str]

    def __iter__(self) -> Iterator[StoredDocument]:
        return iter(self.documents)

    def __len__(self) -> int:
        return len(self.documents)


@dataclass(frozen=True)
class UpsertResult:
    inserted: int = 0  # new ids
    updated: int = 0  # existing ids whose text changed (re-encoded)
    unchanged: int = 0  # same text: metadata replaced, nothing re-encoded

    def __add__(self, other: UpsertResult) -> UpsertResult:
        return UpsertResult(
            self.inserted + other.inserted, self.updated + other.updated, self.unchanged + other.unchanged
        )

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    text: str | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    took_ms: float = 0.0

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> SearchHit:
        return self.hits[i]

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self.hits]


@dataclass(frozen=True)
class RerankHit:
    index: int  # position of the candidate in the request
    score: float
    id: str | None = None  # for id candidates
    text: str | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CollectionStats:
    name: str
    documents: int
    pending_documents: int
    vectors: int
    segments: int
    bytes_per_vector: float
    memory_bytes: int
    disk_bytes: int


@dataclass(frozen=True)
class ServerStats:
    collections: list[CollectionStats]
    uptime_s: float
    version: str
    methods: list[str]
