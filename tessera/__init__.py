"""Tessera: retrieval and reranking on multi-vector (late-interaction) embeddings."""

__version__ = "0.1.0"
