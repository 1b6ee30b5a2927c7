"""Request limits of the service (one place; the CLI can override them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_k: int = 1000
    max_batch_documents: int = 1000  # per Upsert (or per BulkUpsert message)
    max_batch_queries: int = 256  # per BatchSearch
    max_ids: int = 10_000  # per Get / Delete
    max_rerank_candidates: int = 1000
    max_text_bytes: int = 1_000_000  # one document's text, UTF-8
    max_query_bytes: int = 8_192  # one query's text, UTF-8
    max_query_tokens: int = 512  # rows of precomputed query vectors
    max_id_bytes: int = 512
    max_metadata_bytes: int = 65_536  # one document's metadata as JSON
