"""Document encoding for indexing jobs: token vectors in length-sorted batches, and truncation counts."""

from __future__ import annotations

from collections.abc import Sequence

from tessera.packed import PackedDocuments

# Tokens that _tokenize adds around a document's own tokens: [CLS], the document marker, [SEP].
_SPECIAL_TOKENS = 3


class DocumentEncoder:
    """Wraps a Tessera encoder: ``encode`` gives token vectors, ``truncated`` flags over-long texts."""

    def __init__(self, encoder, batch_size: int = 32) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.dim = int(encoder.dim)
        self.max_tokens = int(encoder.config.doc_maxlen) - _SPECIAL_TOKENS

    def encode(self, texts: Sequence[str]) -> PackedDocuments:
        """Vectors of every text, in input order (encode_documents sorts each call by length)."""
        return self.encoder.encode_documents(list(texts), batch_size=self.batch_size, progress=False)

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Which texts have more tokens than the model keeps (doc_maxlen) and so lose their end.

        Every token covers at least one UTF-8 byte, so only texts with more bytes than the limit are
        tokenized (in full) to check."""
        flags = [False] * len(texts)
        m = self.max_tokens
        long = [i for i, t in enumerate(texts) if 4 * len(t) > m and len(t.encode("utf-8")) > m]
        if long:
            tok = self.encoder.tokenizer
            ids = tok([texts[i] for i in long], add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
            for i, row in zip(long, ids, strict=True):
                flags[i] = len(row) > m
        return flags


def load_document_encoder(
    spec: str, device: str = "cpu", batch_size: int = 32, backend: str = "torch", threads: int | None = None
) -> DocumentEncoder:
    """Load a model by name, folder or hub id (ModelError when it cannot be resolved), encoding documents
    with ``backend`` (see ``tessera.training.runtime.use_backend``; ``auto`` falls back to torch)."""
    from tessera.training.checkpoints import load_encoder
    from tessera.training.runtime import use_backend

    encoder = load_encoder(spec, device)
    if backend != "torch":
        use_backend(encoder, backend, threads, queries=False)
    return DocumentEncoder(encoder, batch_size)
