"""Collections and documents: the service's logic, without gRPC (the servicer and local mode call it).

Each collection has a row in the metadata store, an encoder (shared by collections of one model) and
a ``MultiVectorIndex`` folder under ``DATA_DIR/collections/<id>/index``.

Durability (a write is acknowledged only after all of this):

- upsert: the rows are committed to the store as ``pending`` (new or changed text) -> the texts are
  encoded, added to the index and the index is flushed -> the rows are marked ``indexed``. An unchanged
  text (same content hash) only has its metadata replaced: no encoding.
- delete: removed from the index and flushed, then from the store.

At start-up ``reconcile`` makes the two agree after any crash: ``pending`` rows, and rows the index
lacks, are (re-)encoded and indexed; index documents the store lacks are deleted from the index.
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tessera import __version__
from tessera.client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from tessera.client.filters import Filter, parse_filter
from tessera.client.types import (
    CollectionInfo,
    CollectionStats,
    Document,
    GetResult,
    IndexSegment,
    RerankHit,
    SearchHit,
    SearchResult,
    ServerStats,
    StoredDocument,
    UpsertResult,
)
from tessera.errors import ModelError, TesseraError
from tessera.index import MultiVectorIndex
from tessera.index.codec import default_nbits
from tessera.packed import PackedDocuments
from tessera.scoring import maxsim_scores
from tessera.service import validation as check
from tessera.service.batcher import QueryBatcher
from tessera.service.dirlock import DataDirLock
from tessera.service.limits import Limits
from tessera.service.store import CollectionRecord, DuplicateCollection, SegmentRecord, Store, default_url

log = logging.getLogger(__name__)

API_METHODS = ("exact", "plaid", "xtr", "prf", "two-stage")
TWO_STAGE = "two-stage"
REINDEX_BATCH = 256


def index_methods() -> tuple[str, ...]:
    """Search methods the installed index engine offers."""
    from tessera.index import methods

    return tuple(m for m in methods.METHODS if m in API_METHODS)


class Observer:
    """Hooks for metrics; the default does nothing."""

    def encoded(self, kind: str, count: int, seconds: float) -> None:
        pass

    def searched(self, method: str, queries: int, seconds: float) -> None:
        pass


@dataclass
class _EncoderSlot:
    """One model's encoders: queries go through the batcher, documents through ``doc_lock``.

    The two encoders share the model weights but not the tokenizer (a fast tokenizer must not be
    used from two threads at once)."""

    spec: str
    dim: int
    query_encoder: object
    doc_encoder: object
    batcher: QueryBatcher
    doc_lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    clustered: bool = False  # the model stores cluster representatives (CRISP)


@dataclass
class _Live:
    record: CollectionRecord
    index: MultiVectorIndex
    slot: _EncoderSlot
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def dim(self) -> int:
        return self.record.dim

    @property
    def default_method(self) -> str:
        return self.record.settings.get("default_method") or "plaid"


def _check_backends(query_backend: str, doc_backend: str, threads: int | None) -> None:
    """Fail at start-up on an unknown backend, or an ONNX one without onnxruntime installed."""
    from tessera.training.runtime import Runtime, onnx_available

    for kind, spec in (("queries", query_backend), ("documents", doc_backend)):
        rt = Runtime.parse(spec, threads, kind=kind)
        if rt.backend == "onnx" and not onnx_available():
            raise TesseraError(f"backend {spec!r} for {kind} needs onnxruntime: pip install 'tessera[onnx]'")


def _model_spec(spec: str) -> str:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


class Engine:
    """Open (creating when new) the data directory and its metadata store, and reconcile the indexes."""

    def __init__(
        self,
        data_dir: str | Path,
        db_url: str | None = None,
        *,
        limits: Limits | None = None,
        device: str = "cpu",
        observer: Observer | None = None,
        max_query_batch: int = 32,
        query_batch_wait_ms: float = 0.0,
        reconcile: bool = True,
        query_backend: str = "torch",
        doc_backend: str = "torch",
        encoder_threads: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.limits = limits or Limits()
        self.device = device
        self.observer = observer or Observer()
        self.max_query_batch = max_query_batch
        self.query_batch_wait_s = query_batch_wait_ms / 1000
        # inference backends of the encoders (see tessera.training.runtime; `tessera serve` uses auto)
        self.query_backend = query_backend
        self.doc_backend = doc_backend
        self.encoder_threads = encoder_threads
        _check_backends(query_backend, doc_backend, encoder_threads)
        self.started = time.monotonic()
        self._dir_lock = DataDirLock(self.data_dir)  # DataDirInUse when another process has it open
        try:
            self.store = Store(db_url or default_url(self.data_dir))
        except BaseException:
            self._dir_lock.release()
            raise
        self._lock = threading.RLock()  # guards _live and _encoders
        self._live: dict[str, _Live] = {}
        self._encoders: dict[str, _EncoderSlot] = {}
        self._closed = False
        self.methods = (*index_methods(), TWO_STAGE)
        try:
            for rec in self.store.list_collections():
                self._open(rec, reconcile)
        except BaseException:
            self.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------------
    def _collection_dir(self, rec: CollectionRecord) -> Path:
        return self.data_dir / "collections" / f"{rec.id:06d}"

    def _open(self, rec: CollectionRecord, reconcile: bool) -> None:
        folder = self._collection_dir(rec)
        if rec.status == "dropping":
            log.info("finishing the drop of collection %r", rec.name)
            shutil.rmtree(folder, ignore_errors=True)
            self.store.delete_collection(rec.id)
            return
        try:
            slot = self._encoder(rec.model)
        except InvalidArgument as exc:
            raise TesseraError(f"collection {rec.name!r}: cannot load its model: {exc.message}") from None
        if (folder / "index").is_dir() and any((folder / "index").iterdir()):
            index = MultiVectorIndex.open(folder / "index", device=self.device)
        else:
            shutil.rmtree(folder / "index", ignore_errors=True)
            index = self._create_index(folder / "index", rec.dim, rec.settings)
        if rec.status != "ready":
            self.store.set_collection_status(rec.id, "ready")
        live = _Live(rec, index, slot)
        self._live[rec.name] = live
        if reconcile:
            self.reconcile(rec.name)

    def _create_index(self, path: Path | None, dim: int, settings: Mapping) -> MultiVectorIndex:
        return MultiVectorIndex.create(
            path, dim, nbits=settings.get("nbits") or 2, device=self.device, **(settings.get("index") or {})
        )

    def _encoder(self, spec: str) -> _EncoderSlot:
        with self._lock:
            slot = self._encoders.get(spec)
            if slot is None:
                from tessera.training.checkpoints import load_encoder
                from tessera.training.runtime import use_backend

                try:
                    enc = load_encoder(spec, self.device)
                except ModelError as exc:
                    raise InvalidArgument(str(exc), field="model") from None
                except OSError as exc:
                    raise InvalidArgument(f"cannot load model {spec!r}: {exc}", field="model") from None
                if getattr(enc.config, "kind", "multivector") != "multivector":
                    raise InvalidArgument(
                        f"model {spec!r} is a dense ({enc.config.kind}) model with one vector per text; "
                        "a collection needs a multi-vector model (ColBERT, XTR or CRISP)",
                        field="model",
                    )
                q_enc = copy.copy(enc)
                q_enc.tokenizer = copy.deepcopy(enc.tokenizer)
                try:
                    use_backend(enc, self.doc_backend, self.encoder_threads, queries=False)
                    use_backend(q_enc, self.query_backend, self.encoder_threads, documents=False)
                except ModelError as exc:
                    raise InvalidArgument(f"model {spec!r}: {exc}", field="model") from None

                def encode_queries(texts: list[str], _enc=q_enc) -> torch.Tensor:
                    return _enc.encode_queries(texts)

                batcher = QueryBatcher(
                    encode_queries,
                    max_batch=self.max_query_batch,
                    max_wait_s=self.query_batch_wait_s,
                    name=f"query-encoder-{len(self._encoders)}",
                    on_batch=lambda n, s: self.observer.encoded("query", n, s),
                )
                slot = _EncoderSlot(
                    spec, int(enc.dim), q_enc, enc, batcher, clustered=enc.config.clustered
                )
                self._encoders[spec] = slot
            slot.users += 1
            return slot

    def _release_encoder(self, slot: _EncoderSlot) -> None:
        with self._lock:
            slot.users -= 1
            if slot.users <= 0:
                slot.batcher.close()
                self._encoders.pop(slot.spec, None)

    def close(self) -> None:
        """Flush every index and close the store (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for live in list(self._live.values()):
                with live.write_lock:
                    try:
                        _wait_for_maintenance(live.index)
                        live.index.close()
                    except Exception:  # noqa: BLE001 - keep closing the others
                        log.exception("could not flush the index of collection %r", live.name)
            self._live.clear()
            for slot in list(self._encoders.values()):
                slot.batcher.close()
            self._encoders.clear()
            self.store.close()
            self._dir_lock.release()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, name: str, field: str = "collection") -> _Live:
        if self._closed:
            raise Unavailable("the server is shutting down")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("is required", field=field)
        live = self._live.get(name)
        if live is None:
            raise NotFound(f"no collection named {name!r}", field=field)
        return live

    # -- collections ------------------------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        model: str,
        *,
        nbits: int = 0,
        default_method: str = "",
        index_settings: Mapping | None = None,
        if_not_exists: bool = False,
    ) -> CollectionInfo:
        check.collection_name(name)
        if not isinstance(model, str) or not model.strip():
            raise InvalidArgument("is required (a model name, checkpoint folder or hub id)", field="model")
        if nbits and nbits not in (1, 2, 4):
            raise InvalidArgument(f"must be 1, 2 or 4, got {nbits}", field="settings.nbits")
        default_method = default_method or "plaid"
        if default_method not in self.methods:
            raise InvalidArgument(
                f"unknown method {default_method!r} (known: {', '.join(self.methods)})",
                field="settings.default_method",
            )
        index_settings = check.params_dict(index_settings, "settings.index")
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if name in self._live or self.store.get_collection(name) is not None:
                if if_not_exists and name in self._live:
                    return self.describe_collection(name)
                raise AlreadyExists(f"a collection named {name!r} exists already", field="name")
            spec = _model_spec(model)
            slot = self._encoder(spec)
            try:
                nbits = nbits or default_nbits(slot.clustered)  # 0: by model, 4 bits for CRISP models
                settings = {"nbits": nbits, "default_method": default_method, "index": index_settings}
                try:
                    self._create_index(None, slot.dim, settings)  # validates the settings
                except ValueError as exc:
                    where = "settings.index" if "setting" in str(exc) else "settings"
                    raise InvalidArgument(str(exc), field=where) from None
                try:
                    rec = self.store.create_collection(name, spec, slot.dim, settings)
                except DuplicateCollection as exc:
                    raise AlreadyExists(str(exc), field="name") from None
                folder = self._collection_dir(rec)
                shutil.rmtree(folder, ignore_errors=True)  # leftovers of an earlier store
                index = self._create_index(folder / "index", slot.dim, settings)
                self.store.set_collection_status(rec.id, "ready")
            except BaseException:
                self._release_encoder(slot)
                raise
            self._live[name] = _Live(self.store.get_collection(name), index, slot)
            log.info("created collection %r (model %s, dim %d)", name, spec, slot.dim)
        return self.describe_collection(name)

    def list_collections(self) -> list[CollectionInfo]:
        return [self._info(live) for _, live in sorted(self._live.items())]

    def describe_collection(self, name: str) -> CollectionInfo:
        return self._info(self._get(name, "name"))

    def _info(self, live: _Live) -> CollectionInfo:
        counts = self.store.document_counts(live.id)
        s = live.record.settings
        stats = live.index.stats()
        return CollectionInfo(
            name=live.name,
            model=live.record.model,
            dim=live.dim,
            nbits=int(s.get("nbits") or 2),
            default_method=live.default_method,
            index_settings=dict(s.get("index") or {}),
            documents=sum(counts.values()),
            pending_documents=counts.get("pending", 0),
            vectors=int(stats.get("vectors", 0)),
            created_at=live.record.created_at,
            segments=tuple(
                IndexSegment(g.name, g.documents, g.vectors) for g in self.store.segments(live.id)
            ),
        )

    def drop_collection(self, name: str, *, if_exists: bool = False) -> bool:
        check.collection_name(name)
        with self._lock:
            live = self._live.get(name)
            if live is None:
                if if_exists:
                    return False
                raise NotFound(f"no collection named {name!r}", field="name")
            self.store.set_collection_status(live.id, "dropping")
            del self._live[name]
        with live.write_lock:  # let a running write finish
            shutil.rmtree(self._collection_dir(live.record), ignore_errors=True)
            self.store.delete_collection(live.id)
        self._release_encoder(live.slot)
        log.info("dropped collection %r", name)
        return True

    # -- documents --------------------------------------------------------------------------------
    def upsert(
        self,
        collection: str,
        documents: Iterable[Document | Mapping | tuple],
        *,
        vectors: PackedDocuments | None = None,
    ) -> UpsertResult:
        """Insert or replace documents; returns when they are durable in the store and the index.

        ``vectors``: the documents' token vectors, in order, already encoded with the collection's model
        (a batch indexing job); the new and changed documents are indexed from them, not re-encoded."""
        live = self._get(collection)
        docs = check.documents(documents, self.limits)
        if vectors is not None:
            _check_vectors(vectors, len(docs), live.dim)
        if not docs:
            return UpsertResult()
        with live.write_lock:
            self._check_live(live)
            plan = self.store.stage_upsert(live.id, [(d.id, d.text, dict(d.metadata)) for d in docs])
            if plan.to_encode:
                if vectors is None:
                    self._index_texts(live, plan.to_encode)
                else:
                    row = {d.id: i for i, d in enumerate(docs)}
                    self._index_vectors(live, plan.to_encode, vectors.select([row[r[0]] for r in plan.to_encode]))
        return UpsertResult(plan.inserted, plan.updated, plan.unchanged)

    def bulk_upsert(
        self, collection: str, batches: Iterable[Iterable[Document | Mapping | tuple]]
    ) -> UpsertResult:
        """Apply batches in turn (each durable before the next is read)."""
        total = UpsertResult()
        for i, batch in enumerate(batches):
            try:
                total = total + self.upsert(collection, batch)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    exc.message, field=f"batch[{i}].{exc.field}" if exc.field else None
                ) from None
        return total

    def _check_live(self, live: _Live) -> None:
        if self._live.get(live.name) is not live:
            raise NotFound(f"no collection named {live.name!r} (it was dropped)", field="collection")

    def _index_texts(self, live: _Live, rows: Sequence[tuple[str, str, str]], progress: bool = False) -> None:
        """Encode (id, text, hash) rows, add them to the index, flush, then confirm them in the store.
        Caller holds the collection's write lock."""
        bar = tqdm(total=len(rows), desc=f"indexing {live.name}", unit="doc", disable=not progress)
        for start in range(0, len(rows), REINDEX_BATCH):
            part = rows[start : start + REINDEX_BATCH]
            t0 = time.perf_counter()
            with live.slot.doc_lock:
                packed = live.slot.doc_encoder.encode_documents([r[1] for r in part], progress=False)
            self.observer.encoded("document", len(part), time.perf_counter() - t0)
            live.index.add([r[0] for r in part], packed)
            live.index.flush()
            self.store.mark_indexed(live.id, [(r[0], r[2]) for r in part])
            bar.update(len(part))
        bar.close()
        self._sync_segments(live)

    def _index_vectors(self, live: _Live, rows: Sequence[tuple[str, str, str]], packed: PackedDocuments) -> None:
        """Add (id, text, hash) rows with their given vectors, flush, confirm them in the store."""
        live.index.add([r[0] for r in rows], packed)
        live.index.flush()
        self.store.mark_indexed(live.id, [(r[0], r[2]) for r in rows])
        self._sync_segments(live)

    def _sync_segments(self, live: _Live) -> None:
        """Record the index's segments (live documents and vectors of each) in the store."""
        snap = live.index.snapshot
        gen = int(live.index.stats().get("generation", 0))
        segs = [
            SegmentRecord(seg.name, int(alive.sum()), vectors, gen)
            for seg, alive, vectors in zip(snap.segments, snap.alive, snap.live_vectors, strict=True)
        ]
        self.store.replace_segments(live.id, segs)

    def delete(
        self, collection: str, ids: Sequence[str] | None = None, filter: Filter | Mapping | None = None
    ) -> int:
        """Delete by ids or by metadata filter; returns how many documents existed."""
        live = self._get(collection)
        if (ids is None or len(ids) == 0) == (filter is None):
            raise InvalidArgument("give either ids or a filter (not both, not neither)", field="ids")
        tree = parse_filter(filter) if filter is not None else None
        if ids is not None and len(ids):
            ids = check.id_list(ids, self.limits)
        with live.write_lock:
            self._check_live(live)
            if tree is not None:
                ids = self.store.filter_ids(live.id, tree)
            if not ids:
                return 0
            existing = self.store.existing_ids(live.id, ids)
            live.index.delete(list(ids))
            live.index.flush()
            self.store.delete_documents(live.id, ids)
            self._sync_segments(live)
            return len(existing)

    def get(self, collection: str, ids: Sequence[str]) -> GetResult:
        live = self._get(collection)
        ids = check.id_list(ids, self.limits)
        found = self.store.get_documents(live.id, ids)
        docs = [
            StoredDocument(r.id, r.text, r.metadata, r.content_hash, r.status, r.created_at, r.updated_at)
            for r in (found.get(i) for i in ids)
            if r is not None
        ]
        return GetResult(docs, [i for i in ids if i not in found])

    # -- retrieval --------------------------------------------------------------------------------
    def _encode_queries(self, live: _Live, queries: list, timeout: float | None) -> list[torch.Tensor]:
        """Each query as a [tokens, dim] tensor; texts go through the micro-batcher."""
        texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
        out: list = list(queries)
        if texts:
            vectors = live.slot.batcher.encode([t for _, t in texts], timeout=timeout)
            for row, (i, _) in enumerate(texts):
                out[i] = vectors[row]
        return out

    def _resolve_method(self, live: _Live, method: str | None, params) -> tuple[str, dict]:
        method = method or live.default_method
        if method not in API_METHODS:
            raise InvalidArgument(
                f"unknown method {method!r} (known: {', '.join(API_METHODS)})", field="method"
            )
        if method not in self.methods:
            raise InvalidArgument(
                f"method {method!r} is not available in this server (available: {', '.join(self.methods)})",
                field="method",
            )
        return method, check.params_dict(params)

    def batch_search(
        self,
        collection: str,
        queries: Sequence,
        *,
        k: int = 10,
        method: str | None = None,
        params: Mapping | None = None,
        filter: Filter | Mapping | None = None,
        fields: Sequence[str] = (),
        timeout: float | None = None,
        _field: str = "queries",
    ) -> list[SearchResult]:
        """Top-k documents for each query (text, or [tokens, dim] vectors)."""
        start = time.perf_counter()
        live = self._get(collection)
        if getattr(queries, "ndim", None) == 3:  # an array or tensor of [n, tokens, dim] query vectors
            queries = list(queries)
        if isinstance(queries, (str, torch.Tensor)) or not isinstance(queries, Sequence):
            raise InvalidArgument("must be a list of queries", field=_field)
        if not queries:
            raise InvalidArgument("needs at least one query", field=_field)
        if len(queries) > self.limits.max_batch_queries:
            raise InvalidArgument(
                f"{len(queries)} queries is more than the maximum of {self.limits.max_batch_queries}",
                field=_field,
            )
        qs = [
            check.query_value(q, live.dim, self.limits, _field if _field == "query" else f"{_field}[{i}]")
            for i, q in enumerate(queries)
        ]
        k = check.k_value(k, self.limits)
        method, params = self._resolve_method(live, method, params)
        fields = check.fields_list(fields)
        tree = parse_filter(filter)
        allowed = self.store.filter_ids(live.id, tree) if tree is not None else None
        vectors = self._encode_queries(live, qs, timeout)
        t0 = time.perf_counter()
        if allowed is not None and not allowed:
            hits: list[list] = [[] for _ in vectors]
        else:
            hits = self._search(live, vectors, k, method, params, allowed)
        self.observer.searched(method, len(vectors), time.perf_counter() - t0)
        results = self._attach(live, hits, fields)
        took = (time.perf_counter() - start) * 1000
        return [SearchResult(r, took) for r in results]

    def search(self, collection: str, query, **kwargs) -> SearchResult:
        """Top-k documents for one query; keywords as for ``batch_search``."""
        if isinstance(query, Sequence) and not isinstance(query, str):
            query = query if len(query) else None  # an empty list is a missing query
        if query is None:
            raise InvalidArgument("is required (text or vectors)", field="query")
        return self.batch_search(collection, [query], _field="query", **kwargs)[0]

    def _search(self, live: _Live, vectors: list[torch.Tensor], k: int, method: str, params: dict, allowed):
        same = len({tuple(v.shape) for v in vectors}) == 1
        groups = [torch.stack(vectors)] if same else [v[None] for v in vectors]
        out: list[list] = []
        for q in groups:
            try:
                if method == TWO_STAGE:
                    out.extend(self._two_stage(live, q, k, params, allowed))
                else:
                    out.extend(live.index.search(q, k=k, method=method, params=params, allowed_ids=allowed))
            except ValueError as exc:
                raise _index_error(exc) from None
        return out

    def _two_stage(self, live: _Live, q: torch.Tensor, k: int, params: dict, allowed) -> list[list]:
        """Candidates from a first-stage method, then exact MaxSim over them."""
        params = dict(params)
        first = params.pop("first_stage", "plaid")
        candidates = params.pop("candidates", max(100, 4 * k))
        if first not in self.methods or first == TWO_STAGE:
            known = ", ".join(m for m in self.methods if m != TWO_STAGE)
            raise InvalidArgument(
                f"unknown first stage {first!r} (known: {known})", field="params.first_stage"
            )
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < k:
            raise InvalidArgument(
                f"must be an integer >= k ({k}), got {candidates!r}", field="params.candidates"
            )
        candidates = min(candidates, max(self.limits.max_k, k) * 10)
        first_hits = live.index.search(q, k=candidates, method=first, params=params, allowed_ids=allowed)
        # ids deleted meanwhile are skipped by rerank
        return live.index.rerank(q, [[h.id for h in hits] for hits in first_hits], k)

    def _attach(self, live: _Live, hits: list[list], fields: tuple[str, ...]) -> list[list[SearchHit]]:
        if not fields:
            return [[SearchHit(h.id, float(h.score)) for h in row] for row in hits]
        ids = list(dict.fromkeys(h.id for row in hits for h in row))
        docs = self.store.get_documents(live.id, ids, text="text" in fields, metadata="metadata" in fields)
        return [
            [
                SearchHit(h.id, float(h.score), docs[h.id].text, docs[h.id].metadata)
                for h in row
                if h.id in docs  # deleted from the store meanwhile
            ]
            for row in hits
        ]

    def rerank(
        self,
        collection: str,
        query,
        *,
        ids: Sequence[str] | None = None,
        passages: Sequence[str] | None = None,
        top_k: int = 0,
        fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> list[RerankHit]:
        """Exact MaxSim of the query against candidate documents (by id) or raw passages, best first."""
        live = self._get(collection)
        if query is None or (not isinstance(query, str) and hasattr(query, "__len__") and len(query) == 0):
            raise InvalidArgument("is required (text or vectors)", field="query")
        q = check.query_value(query, live.dim, self.limits)
        if bool(ids) == bool(passages):
            raise InvalidArgument("give candidate ids or passages (one of the two)", field="ids")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise InvalidArgument(f"must be a non-negative integer, got {top_k!r}", field="top_k")
        fields = check.fields_list(fields)
        n = len(ids or passages)
        if n > self.limits.max_rerank_candidates:
            raise InvalidArgument(
                f"{n} candidates is more than the maximum of {self.limits.max_rerank_candidates}",
                field="ids" if ids else "passages",
            )
        qv = self._encode_queries(live, [q], timeout)[0]
        if ids:
            ids = check.id_list(ids, self.limits)
            try:
                scored = live.index.score(qv, ids)
            except KeyError as exc:
                raise NotFound(
                    str(exc.args[0]) if exc.args else "unknown document ids", field="ids"
                ) from None
            pos = {doc_id: i for i, doc_id in enumerate(ids)}
            hits = [RerankHit(pos[h.id], float(h.score), h.id) for h in scored]
            if top_k:
                hits = hits[:top_k]
            if fields:
                docs = self.store.get_documents(
                    live.id, [h.id for h in hits], text="text" in fields, metadata="metadata" in fields
                )
                hits = [
                    RerankHit(h.index, h.score, h.id, docs[h.id].text, docs[h.id].metadata)
                    for h in hits
                    if h.id in docs
                ]
            return hits
        for i, p in enumerate(passages):
            if not isinstance(p, str) or not p.strip():
                raise InvalidArgument("must be a non-empty string", field=f"passages[{i}]")
            if check.utf8_size(p, f"passages[{i}]") > self.limits.max_text_bytes:
                raise InvalidArgument(
                    f"is longer than {self.limits.max_text_bytes} bytes", field=f"passages[{i}]"
                )
        t0 = time.perf_counter()
        with live.slot.doc_lock:
            packed = live.slot.doc_encoder.encode_documents(list(passages), progress=False)
        self.observer.encoded("document", len(passages), time.perf_counter() - t0)
        scores = maxsim_scores(qv[None], packed)[0]
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        hits = [
            RerankHit(i, float(scores[i]), None, passages[i] if "text" in fields else None) for i in order
        ]
        return hits[:top_k] if top_k else hits

    # -- stats and reconciliation -----------------------------------------------------------------
    def stats(self, collection: str | None = None) -> ServerStats:
        lives = [self._get(collection)] if collection else [v for _, v in sorted(self._live.items())]
        out = []
        for live in lives:
            counts = self.store.document_counts(live.id)
            st = live.index.stats()
            out.append(
                CollectionStats(
                    name=live.name,
                    documents=sum(counts.values()),
                    pending_documents=counts.get("pending", 0),
                    vectors=int(st.get("vectors", 0)),
                    segments=int(st.get("segments", 0)),
                    bytes_per_vector=float(st.get("bytes_per_vector", 0.0)),
                    memory_bytes=int(st.get("memory_bytes", 0)),
                    disk_bytes=int(st.get("disk_bytes") or 0),
                )
            )
        return ServerStats(out, time.monotonic() - self.started, __version__, list(self.methods))

    def reconcile(self, collection: str) -> tuple[int, int]:
        """Make the index agree with the store; returns (re-indexed, removed from the index)."""
        live = self._get(collection)
        with live.write_lock:
            status = self.store.id_status(live.id)
            in_index = set(live.index.ids())
            stale = sorted(in_index - status.keys())
            redo = sorted(i for i, s in status.items() if s != "indexed" or i not in in_index)
            if stale:
                live.index.delete(stale)
                live.index.flush()
            if redo:
                texts = self.store.texts(live.id, redo)
                rows = [(i, *texts[i]) for i in redo if i in texts]
                self._index_texts(live, rows, progress=len(rows) >= 1000)
            if stale or redo:
                self._sync_segments(live)
                log.info(
                    "reconciled collection %r: %d document(s) re-indexed, %d removed from the index",
                    live.name,
                    len(redo),
                    len(stale),
                )
        return len(redo), len(stale)

    def check_consistency(self, collection: str) -> None:
        """Raise FailedPrecondition when the store and the index disagree (for tests and ops)."""
        live = self._get(collection)
        with live.write_lock:
            status = self.store.id_status(live.id)
            in_index = set(live.index.ids())
        if set(status) != in_index or any(s != "indexed" for s in status.values()):
            raise FailedPrecondition(
                f"collection {collection!r}: store has {len(status)} documents "
                f"({sum(s != 'indexed' for s in status.values())} pending), index has {len(in_index)}, "
                f"{len(set(status) ^ in_index)} differ"
            )


def _check_vectors(vectors, n: int, dim: int) -> None:
    if not isinstance(vectors, PackedDocuments):
        raise InvalidArgument(f"must be PackedDocuments, got {type(vectors).__name__}", field="vectors")
    if len(vectors) != n:
        raise InvalidArgument(f"holds {len(vectors)} documents for {n} documents", field="vectors")
    if n and vectors.dim != dim:
        raise InvalidArgument(f"have dimension {vectors.dim} but the collection has {dim}", field="vectors")


def _wait_for_maintenance(index: MultiVectorIndex) -> None:
    """Let a background re-training of the index finish (it is flushed by close)."""
    wait = getattr(index, "wait_for_maintenance", None)
    if wait is not None:
        wait()


def _index_error(exc: ValueError) -> InvalidArgument:
    msg = str(exc)
    low = msg.lower()
    if "parameter" in low:
        return InvalidArgument(msg, field="params")
    if low.startswith("k ") or low.startswith("k=") or " k=" in low:
        return InvalidArgument(msg, field="k")
    if "quer" in low or "dimension" in low:
        return InvalidArgument(msg, field="query")
    return InvalidArgument(msg)
