"""Multi-vector index engine: compressed token store with exact, PLAID, XTR and PRF search.

The index takes embeddings (PackedDocuments / tensors), never text.
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
