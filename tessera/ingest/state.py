"""The checkpoint of a batch indexing job: a small SQLite file.

It holds the job's identity (corpus file, reading options, target collection), its progress (the input
position up to which every document is durable in the collection, and the counters up to there) and
the ids seen so far with their line numbers (duplicate detection without holding the ids in memory).
Progress and ids are committed in one transaction after the documents are durable in the collection;
killed at any point, a re-run continues from the last commit and re-sends at most one buffer, whose
documents are upserted by id again (no duplicates, nothing missing).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tessera.errors import DataError
from tessera.ingest.readers import Position

SCHEMA_VERSION = 1
MAX_EXAMPLES = 20
SKIP_REASONS = ("malformed", "empty", "duplicate", "too_large")


@dataclass
class Counters:
    """What a job has done so far (over all its runs)."""

    read: int = 0  # records and bad lines read
    documents: int = 0  # documents written (inserted + updated + unchanged)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    vectors: int | None = 0  # token vectors encoded (None: unknown, the server encoded)
    truncated: int | None = 0  # documents longer than the model's doc_maxlen (None: not counted)
    bytes: int = 0  # input bytes (rows for Parquet) consumed
    seconds: float = 0.0
    runs: int = 0
    text_bytes: int = 0  # UTF-8 bytes of the texts written
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    examples: list[str] = field(default_factory=list)  # the first skipped lines, with reasons

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    @classmethod
    def from_dict(cls, data: dict) -> Counters:
        c = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        c.skipped = {**cls().skipped, **c.skipped}
        return c


@dataclass
class Progress:
    position: Position = Position()
    done: bool = False
    counters: Counters = field(default_factory=Counters)


class JobState:
    """Open (creating) the checkpoint file at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a job state file ({exc}); remove it or give another --state") from None

    def close(self) -> None:
        self.db.close()

    def _get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def identity(self) -> dict | None:
        return self._get("identity")

    def progress(self) -> Progress:
        data = self._get("progress")
        if data is None:
            return Progress()
        return Progress(Position(**data["position"]), bool(data["done"]), Counters.from_dict(data["counters"]))

    def start(self, identity: dict) -> None:
        """Forget everything and begin a new job with this identity."""
        with self._transaction():
            self.db.execute("DELETE FROM seen")
            self.db.execute("DELETE FROM meta")
            self._put("identity", {**identity, "schema": SCHEMA_VERSION})
            self._put("progress", _progress_dict(Progress()))

    def seen(self, doc_id: str) -> int | None:
        """The line where ``doc_id`` was committed, or None."""
        row = self.db.execute("SELECT line FROM seen WHERE id = ?", (doc_id,)).fetchone()
        return row[0] if row else None

    def commit(self, ids: Iterable[tuple[str, int]], progress: Progress) -> None:
        """Record ids as written and the new progress, atomically."""
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO seen (id, line) VALUES (?, ?)", ids)
            self._put("progress", _progress_dict(progress))

    def _put(self, key: str, value: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")


def _progress_dict(p: Progress) -> dict:
    return {"position": asdict(p.position), "done": p.done, "counters": asdict(p.counters)}
