"""The metadata store: collections, documents and index segments in SQL (SQLite or PostgreSQL).

The rest of Tessera sees plain records and methods; SQLAlchemy stays inside this package.
Writes are short transactions; on SQLite they are serialised by a lock (one writer per file) and the
database runs in WAL mode with ``synchronous=FULL`` so a committed write survives a crash.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import bindparam, create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.filters import Filter
from tessera.errors import TesseraError
from tessera.service.store import migrate
from tessera.service.store.filters import compile_filter
from tessera.service.store.models import CollectionRow, DocumentRow, SegmentRow, utcnow

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) list
_DOCS = DocumentRow.__table__


class StoreError(TesseraError):
    """The metadata database cannot be reached or used."""


class DuplicateCollection(StoreError):
    """A collection with that name exists already."""


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utc(t: datetime | None) -> datetime | None:
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=timezone.utc)  # SQLite keeps no zone; everything stored is UTC
    return t


def _chunks(items: Sequence, n: int = CHUNK) -> Iterator[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@dataclass(frozen=True)
class CollectionRecord:
    id: int
    name: str
    model: str
    dim: int
    settings: dict
    status: str
    created_at: datetime | None


@dataclass(frozen=True)
class DocumentRecord:
    id: str
    text: str | None
    metadata: dict | None
    content_hash: str
    status: str
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class SegmentRecord:
    name: str
    documents: int
    vectors: int
    generation: int


@dataclass
class UpsertPlan:
    """What ``stage_upsert`` committed: rows to encode (new or changed text) and the counts."""

    to_encode: list[tuple[str, str, str]] = field(default_factory=list)  # (id, text, hash)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def default_url(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'tessera.db'}"


class Store:
    """Open (and migrate) the store at a SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://``."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StoreError(f"invalid database URL {url!r}") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise StoreError(
                f"unsupported database {self.dialect!r}: use sqlite:/// or postgresql+psycopg://"
            )
        self.url = parsed
        kwargs: dict = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise StoreError("an in-memory SQLite store is not supported; give a file path")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=8, max_overflow=8)
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            migrate.upgrade(self.engine)
        except OperationalError as exc:
            self.engine.dispose()
            raise StoreError(
                f"cannot open the metadata database {parsed.render_as_string()}: {exc.orig}"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    def schema_revision(self) -> str | None:
        return migrate.current_revision(self.engine)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self._sessions.begin() as session:
                yield session
        finally:
            if lock is not None:
                lock.release()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    # -- collections ------------------------------------------------------------------------------
    @staticmethod
    def _collection(row: CollectionRow) -> CollectionRecord:
        return CollectionRecord(
            row.id, row.name, row.model, row.dim, dict(row.settings or {}), row.status, _utc(row.created_at)
        )

    def create_collection(self, name: str, model: str, dim: int, settings: dict) -> CollectionRecord:
        try:
            with self._write() as s:
                row = CollectionRow(name=name, model=model, dim=dim, settings=settings, status="creating")
                s.add(row)
                s.flush()
                return self._collection(row)
        except IntegrityError:
            raise DuplicateCollection(f"a collection named {name!r} exists already") from None

    def set_collection_status(self, collection_id: int, status: str) -> None:
        with self._write() as s:
            s.execute(
                update(CollectionRow)
                .where(CollectionRow.id == collection_id)
                .values(status=status, updated_at=utcnow())
            )

    def delete_collection(self, collection_id: int) -> None:
        with self._write() as s:
            # explicit deletes: SQLite enforces ON DELETE CASCADE only with foreign_keys=ON
            s.execute(delete(DocumentRow).where(DocumentRow.collection_id == collection_id))
            s.execute(delete(SegmentRow).where(SegmentRow.collection_id == collection_id))
            s.execute(delete(CollectionRow).where(CollectionRow.id == collection_id))

    def get_collection(self, name: str) -> CollectionRecord | None:
        with self._read() as s:
            row = s.scalars(select(CollectionRow).where(CollectionRow.name == name)).first()
            return self._collection(row) if row else None

    def list_collections(self) -> list[CollectionRecord]:
        with self._read() as s:
            return [
                self._collection(r) for r in s.scalars(select(CollectionRow).order_by(CollectionRow.name))
            ]

    # -- documents --------------------------------------------------------------------------------
    def stage_upsert(self, collection_id: int, docs: Sequence[tuple[str, str, dict]]) -> UpsertPlan:
        """Commit the batch: new and changed texts as 'pending' rows (to be encoded), unchanged texts
        as a metadata update only. ``docs`` are (id, text, metadata) with distinct ids."""
        plan = UpsertPlan()
        hashes = {doc_id: content_hash(text) for doc_id, text, _ in docs}
        now = utcnow()
        with self._write() as s:
            existing: dict[str, tuple[int, str, str]] = {}
            for part in _chunks([d[0] for d in docs]):
                rows = s.execute(
                    select(
                        DocumentRow.external_id, DocumentRow.id, DocumentRow.content_hash, DocumentRow.status
                    ).where(DocumentRow.collection_id == collection_id, DocumentRow.external_id.in_(part))
                )
                existing.update({r[0]: (r[1], r[2], r[3]) for r in rows})
            new_rows, changed, same = [], [], []
            for doc_id, text, meta in docs:
                h = hashes[doc_id]
                old = existing.get(doc_id)
                if old is None:
                    new_rows.append(
                        {
                            "collection_id": collection_id,
                            "external_id": doc_id,
                            "text": text,
                            "metadata": meta,
                            "content_hash": h,
                            "status": "pending",
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                    plan.inserted += 1
                    plan.to_encode.append((doc_id, text, h))
                elif old[1] == h and old[2] == "indexed":
                    same.append({"pk": old[0], "metadata": meta, "updated_at": now})
                    plan.unchanged += 1
                else:
                    changed.append(
                        {
                            "pk": old[0],
                            "text": text,
                            "metadata": meta,
                            "content_hash": h,
                            "status": "pending",
                            "updated_at": now,
                        }
                    )
                    plan.updated += 1
                    plan.to_encode.append((doc_id, text, h))
            conn = s.connection()
            if new_rows:
                conn.execute(insert(_DOCS), new_rows)
            for rows in (changed, same):
                if rows:
                    cols = [k for k in rows[0] if k != "pk"]
                    stmt = (
                        update(_DOCS)
                        .where(_DOCS.c.id == bindparam("b_pk"))
                        .values({c: bindparam("b_" + c) for c in cols})
                    )
                    conn.execute(stmt, [{"b_" + k: v for k, v in r.items()} for r in rows])
        return plan

    def mark_indexed(self, collection_id: int, docs: Iterable[tuple[str, str]]) -> int:
        """Confirm (id, content hash) pairs as durable in the index; rows changed since stay pending."""
        docs = list(docs)
        if not docs:
            return 0
        with self._write() as s:
            result = s.connection().execute(
                update(_DOCS)
                .where(
                    _DOCS.c.collection_id == collection_id,
                    _DOCS.c.external_id == bindparam("b_id"),
                    _DOCS.c.content_hash == bindparam("b_hash"),
                )
                .values(status="indexed"),
                [{"b_id": i, "b_hash": h} for i, h in docs],
            )
            return result.rowcount

    def delete_documents(self, collection_id: int, ids: Sequence[str]) -> int:
        deleted = 0
        with self._write() as s:
            for part in _chunks(list(ids)):
                deleted += s.execute(
                    delete(DocumentRow).where(
                        DocumentRow.collection_id == collection_id, DocumentRow.external_id.in_(part)
                    )
                ).rowcount
        return deleted

    def existing_ids(self, collection_id: int, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        with self._read() as s:
            for part in _chunks(list(ids)):
                out.update(
                    s.scalars(
                        select(DocumentRow.external_id).where(
                            DocumentRow.collection_id == collection_id, DocumentRow.external_id.in_(part)
                        )
                    )
                )
        return out

    def get_documents(
        self, collection_id: int, ids: Sequence[str], *, text: bool = True, metadata: bool = True
    ) -> dict[str, DocumentRecord]:
        cols = [
            DocumentRow.external_id,
            DocumentRow.content_hash,
            DocumentRow.status,
            DocumentRow.created_at,
            DocumentRow.updated_at,
        ]
        if text:
            cols.append(DocumentRow.text.label("text"))
        if metadata:
            cols.append(DocumentRow.meta.label("metadata"))
        out: dict[str, DocumentRecord] = {}
        with self._read() as s:
            for part in _chunks(list(ids)):
                rows = s.execute(
                    select(*cols).where(
                        DocumentRow.collection_id == collection_id, DocumentRow.external_id.in_(part)
                    )
                )
                for r in rows:
                    m = r._mapping
                    out[r[0]] = DocumentRecord(
                        r[0],
                        m.get("text") if text else None,
                        dict(m.get("metadata") or {}) if metadata else None,
                        r[1],
                        r[2],
                        _utc(r[3]),
                        _utc(r[4]),
                    )
        return out

    def filter_ids(self, collection_id: int, tree: Filter) -> list[str]:
        """External ids of the collection's documents whose metadata matches the filter."""
        cond = compile_filter(tree, DocumentRow.meta, self.dialect)
        with self._read() as s:
            return list(
                s.scalars(
                    select(DocumentRow.external_id).where(DocumentRow.collection_id == collection_id, cond)
                )
            )

    def id_status(self, collection_id: int) -> dict[str, str]:
        """Every document id of the collection with its status (for reconciliation)."""
        with self._read() as s:
            rows = s.execute(
                select(DocumentRow.external_id, DocumentRow.status).where(
                    DocumentRow.collection_id == collection_id
                )
            )
            return {r[0]: r[1] for r in rows}

    def texts(self, collection_id: int, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """id -> (text, content hash)."""
        out = {}
        with self._read() as s:
            for part in _chunks(list(ids)):
                rows = s.execute(
                    select(DocumentRow.external_id, DocumentRow.text, DocumentRow.content_hash).where(
                        DocumentRow.collection_id == collection_id, DocumentRow.external_id.in_(part)
                    )
                )
                out.update({r[0]: (r[1], r[2]) for r in rows})
        return out

    def document_counts(self, collection_id: int) -> dict[str, int]:
        with self._read() as s:
            rows = s.execute(
                select(DocumentRow.status, func.count())
                .where(DocumentRow.collection_id == collection_id)
                .group_by(DocumentRow.status)
            )
            return {r[0]: int(r[1]) for r in rows}

    # -- index segments ---------------------------------------------------------------------------
    def replace_segments(self, collection_id: int, segments: Sequence[SegmentRecord]) -> None:
        with self._write() as s:
            s.execute(delete(SegmentRow).where(SegmentRow.collection_id == collection_id))
            if segments:
                s.execute(
                    insert(SegmentRow),
                    [
                        dict(
                            collection_id=collection_id,
                            name=g.name,
                            documents=g.documents,
                            vectors=g.vectors,
                            generation=g.generation,
                            created_at=utcnow(),
                        )
                        for g in segments
                    ],
                )

    def segments(self, collection_id: int) -> list[SegmentRecord]:
        with self._read() as s:
            rows = s.scalars(
                select(SegmentRow).where(SegmentRow.collection_id == collection_id).order_by(SegmentRow.name)
            )
            return [SegmentRecord(r.name, r.documents, r.vectors, r.generation) for r in rows]


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
