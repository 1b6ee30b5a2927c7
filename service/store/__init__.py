"""SQL metadata store (SQLAlchemy 2 + Alembic): collections, documents, index segments."""

from tessera.service.store.store import (
    CollectionRecord,
    DocumentRecord,
    DuplicateCollection,
    SegmentRecord,
    Store,
    StoreError,
    UpsertPlan,
    content_hash,
    default_url,
)

__all__ = [
    "CollectionRecord",
    "DocumentRecord",
    "DuplicateCollection",
    "SegmentRecord",
    "Store",
    "StoreError",
    "UpsertPlan",
    "content_hash",
    "default_url",
]
