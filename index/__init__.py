"""Multi-vector index engine: compressed token store with exact, PLAID, XTR and PRF search.

The index takes embeddings (PackedDocuments / tensors), never text.

With ``auto_retrain`` (default on) an ``add`` can start a background re-training of the centroids;
when it is swapped in, every vector has new codes and approximate searches may return different
results for the same query (see ``MultiVectorIndex.retrain``). ``close()`` waits for it and keeps it
(``close(cancel_maintenance=True)`` drops it); at interpreter exit an unclosed index's re-training
stops at its next check point.
"""

from tessera.index.core import Hit, MultiVectorIndex
from tessera.index.errors import (
    IndexCorruptError,
    IndexError_,
    IndexExistsError,
    IndexNotFoundError,
    IndexVersionError,
)

__all__ = [
    "Hit",
    "IndexCorruptError",
    "IndexError_",
    "IndexExistsError",
    "IndexNotFoundError",
    "IndexVersionError",
    "MultiVectorIndex",
]
