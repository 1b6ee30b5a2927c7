"""Where an indexing job writes: a local data directory (the service's engine, in-process) or a server.

Both upsert by external id, so writing a document again replaces it (or, with the same text, only
its metadata): that is what makes a re-run after a crash safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tessera.client.errors import DeadlineExceeded, NotFound, ResourceExhausted, ServiceError, Unavailable
from tessera.client.types import CollectionInfo, Document
from tessera.errors import DataError, TesseraError
from tessera.ingest.encoding import DocumentEncoder, load_document_encoder
from tessera.ingest.readers import Record
from tessera.packed import PackedDocuments

log = logging.getLogger(__name__)


@dataclass
class Written:
    """What one write did (``vectors``/``truncated`` None where not known)."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    vectors: int | None = 0
    truncated: int | None = 0


@dataclass
class CollectionSettings:
    """How to create the collection when it does not exist."""

    model: str | None = None  # None: the collection's model, or "default" for a new collection
    nbits: int = 0
    index_settings: dict | None = None


def _same_model(given: str, stored: str) -> bool:
    path = Path(given).expanduser()
    return (str(path.resolve()) if path.exists() else given) == stored


def _documents(records: Sequence[Record]) -> list[Document]:
    return [Document(r.id, r.text, r.metadata) for r in records]


def _check_model(info: CollectionInfo, settings: CollectionSettings) -> None:
    if settings.model and not _same_model(settings.model, info.model):
        raise DataError(
            f"collection {info.name!r} exists with model {info.model!r}, not {settings.model!r}; "
            "leave out --model to use the collection's model, or choose another --collection"
        )


class LocalSink:
    """Writes into a data directory through the service's engine (``tessera serve --data-dir`` serves it).

    A write without vectors is encoded here, only its new and changed texts (same id, same text:
    nothing to encode); the Ray path brings the vectors along."""

    kind = "data-dir"

    def __init__(
        self,
        data_dir: str | Path,
        collection: str,
        settings: CollectionSettings,
        *,
        db_url: str | None = None,
        device: str = "cpu",
        encode_batch: int = 32,
        backend: str = "torch",
        threads: int | None = None,
    ) -> None:
        from tessera.service.engine import Engine
        from tessera.service.limits import Limits

        self.target = str(Path(data_dir).expanduser().resolve())
        self.collection = collection
        # one write holds a whole buffer: lift the service's per-request limits on batch and id counts
        limits = Limits(max_batch_documents=1 << 30, max_ids=1 << 30)
        self.engine = Engine(data_dir, db_url, limits=limits, device=device)
        self.device = device
        self.encode_batch = encode_batch
        self.backend = backend
        self.threads = threads
        self._encoder: DocumentEncoder | None = None
        try:
            self.info = self._ensure(settings)
        except BaseException:
            self.engine.close()
            raise

    @property
    def encoder(self) -> DocumentEncoder:
        """The collection's model, loaded on first use (a complete job never needs it)."""
        if self._encoder is None:
            self._encoder = load_document_encoder(
                self.info.model, self.device, self.encode_batch, self.backend, self.threads
            )
        return self._encoder

    @property
    def encoder_backend(self) -> str | None:
        """The backend that encoded this run's documents (None when nothing was encoded here)."""
        return self._encoder.encoder.backend_name("documents") if self._encoder is not None else None

    def _ensure(self, settings: CollectionSettings) -> CollectionInfo:
        try:
            info = self.engine.describe_collection(self.collection)
        except NotFound:
            return self.engine.create_collection(
                self.collection,
                settings.model or "default",
                nbits=settings.nbits,
                index_settings=settings.index_settings,
            )
        _check_model(info, settings)
        return info

    def write(self, records: Sequence[Record], vectors: PackedDocuments | None = None) -> Written:
        docs = _documents(records)
        if vectors is not None:
            r = self.engine.upsert(self.collection, docs, vectors=vectors)
            return Written(r.inserted, r.updated, r.unchanged, int(vectors.lengths.sum()), None)
        from tessera.service.store.store import content_hash

        stored = {d.id: d for d in self.engine.get(self.collection, [d.id for d in docs]).documents}
        fresh, same = [], []
        for d in docs:
            old = stored.get(d.id)
            same_text = old is not None and old.status == "indexed" and old.content_hash == content_hash(d.text)
            (same if same_text else fresh).append(d)
        out = Written(truncated=sum(self.encoder.truncated([d.text for d in docs])))
        if fresh:
            packed = self.encoder.encode([d.text for d in fresh])
            r = self.engine.upsert(self.collection, fresh, vectors=packed)
            out.inserted, out.updated, out.unchanged = r.inserted, r.updated, r.unchanged
            out.vectors = int(packed.lengths.sum())
        if same:  # metadata only (the engine re-encodes a text that changed meanwhile)
            r = self.engine.upsert(self.collection, same)
            out.inserted, out.updated, out.unchanged = (
                out.inserted + r.inserted,
                out.updated + r.updated,
                out.unchanged + r.unchanged,
            )
        return out

    def collection_stats(self) -> dict:
        info = self.engine.describe_collection(self.collection)
        st = self.engine.stats(self.collection).collections[0]
        return {"documents": info.documents, "vectors": info.vectors, "disk_bytes": st.disk_bytes}

    def close(self) -> None:
        self.engine.close()


class RemoteSink:
    """Writes to a running server with the SDK's bulk upsert; the server encodes the texts.

    A write that fails with UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED is sent again (upserts
    by id are idempotent) up to ``retries`` times, with growing pauses."""

    kind = "server"

    def __init__(
        self,
        target: str,
        collection: str,
        settings: CollectionSettings,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: str | None = None,
        client_certificate: str | None = None,
        client_key: str | None = None,
        timeout: float = 600.0,
        upsert_batch: int = 256,
        retries: int = 5,
        count_truncated: bool = True,
    ) -> None:
        from tessera.client import Client

        self.target = target
        self.collection = collection
        self.upsert_batch = upsert_batch
        self.retries = retries
        self.timeout = timeout
        self.client = Client(
            target,
            api_key=api_key,
            tls=tls or bool(root_certificates or client_certificate),
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
            timeout=min(timeout, 60.0),
        )
        try:
            self.info = self._ensure(settings)
            self.encoder = self._tokenizer_only(settings.model or self.info.model) if count_truncated else None
        except BaseException:
            self.client.close()
            raise

    def _ensure(self, settings: CollectionSettings) -> CollectionInfo:
        try:
            info = self.client.describe_collection(self.collection)
        except NotFound:
            info = self.client.create_collection(
                self.collection,
                settings.model or "default",
                nbits=settings.nbits,
                index_settings=settings.index_settings,
                if_not_exists=True,
            )
            log.info("created collection %r on %s (model %s)", self.collection, self.target, info.model)
            return info
        except Unavailable as exc:
            raise TesseraError(f"cannot reach the server at {self.target}: {exc.message}") from None
        except ServiceError as exc:
            raise TesseraError(f"{self.target}: {exc.code}: {exc}") from None
        _check_model(info, settings)
        return info

    @staticmethod
    def _tokenizer_only(spec: str) -> DocumentEncoder | None:
        """The model, loaded here only to count over-long documents; None when it is not available here
        (a folder on the server's machine, or a hub id: no download for this)."""
        from tessera.training.checkpoints import available_models

        if spec not in available_models() and not Path(spec).expanduser().is_dir():
            log.info("over-long documents are not counted: model %r is not available here", spec)
            return None
        try:
            return load_document_encoder(spec)
        except (TesseraError, OSError, ValueError) as exc:
            log.info("over-long documents are not counted: model %r is not available here (%s)", spec, exc)
            return None

    def write(self, records: Sequence[Record], vectors: PackedDocuments | None = None) -> Written:
        docs = _documents(records)
        attempt = 0
        while True:
            try:
                r = self.client.bulk_upsert(
                    self.collection, docs, batch_size=self.upsert_batch, progress=False, timeout=self.timeout
                )
                break
            except (Unavailable, DeadlineExceeded, ResourceExhausted) as exc:
                if attempt >= self.retries:
                    raise TesseraError(f"{exc.code} after {attempt + 1} attempts: {exc.message}") from None
                pause = min(30.0, 0.5 * 2**attempt)
                log.warning("%s from %s (%s); sending the batch again in %.1fs", exc.code, self.target, exc, pause)
                time.sleep(pause)
                attempt += 1
            except ServiceError as exc:
                raise TesseraError(f"the server refused a batch: {exc.code}: {exc}") from None
        truncated = sum(self.encoder.truncated([d.text for d in docs])) if self.encoder else None
        return Written(r.inserted, r.updated, r.unchanged, None, truncated)

    def collection_stats(self) -> dict:
        info = self.client.describe_collection(self.collection)
        st = self.client.stats(self.collection).collections[0]
        return {"documents": info.documents, "vectors": info.vectors, "disk_bytes": st.disk_bytes}

    def close(self) -> None:
        self.client.close()


def packed_from_rows(rows: Sequence[tuple[bytes, bytes]], dim: int) -> PackedDocuments:
    """PackedDocuments from per-document (fp16 vector bytes, int32 token-id bytes) pairs."""
    vectors = np.frombuffer(b"".join(v for v, _ in rows), dtype=np.float16).reshape(-1, dim)
    tokens = np.frombuffer(b"".join(t for _, t in rows), dtype=np.int32)
    lengths = torch.tensor([len(v) // (2 * dim) for v, _ in rows], dtype=torch.long)
    return PackedDocuments(torch.from_numpy(vectors.copy()), torch.from_numpy(tokens.copy()), lengths)
