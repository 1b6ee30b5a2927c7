"""Tessera client SDK.

``Client`` (blocking) and ``AsyncClient`` (asyncio) talk to a ``tessera serve`` server over gRPC, or
run in-process with ``Client.local(path)``. Results are plain dataclasses (``tessera.client.types``);
failures raise ``tessera.client.errors.ServiceError`` subclasses (``NotFound``, ``InvalidArgument``...).
"""

from tessera.client.aio import AsyncClient
from tessera.client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from tessera.client.filters import And, Eq, In, Or, Range
from tessera.client.sync import Client
from tessera.client.types import (
    CollectionInfo,
    CollectionStats,
    Document,
    GetResult,
    RerankHit,
    SearchHit,
    SearchResult,
    ServerStats,
    StoredDocument,
    UpsertResult,
)

__all__ = [
    "AlreadyExists",
    "And",
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "CollectionStats",
    "DeadlineExceeded",
    "Document",
    "Eq",
    "GetResult",
    "In",
    "InvalidArgument",
    "NotFound",
    "Or",
    "PermissionDenied",
    "Range",
    "RerankHit",
    "ResourceExhausted",
    "SearchHit",
    "SearchResult",
    "ServerStats",
    "ServiceError",
    "StoredDocument",
    "Unauthenticated",
    "Unavailable",
    "UpsertResult",
]
