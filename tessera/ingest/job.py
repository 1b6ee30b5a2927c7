"""The batch indexing job: stream a corpus, check each record, encode in length-sorted buffers, write.

Loop: read records in file order -> skip (and report) malformed lines, empty texts, repeated ids and
oversized fields -> collect up to ``buffer`` documents -> sort them by length, encode, write them (one
upsert by id per buffer) -> commit the checkpoint (input position, ids, counters). See ``state`` for
why a killed job resumes with no duplicates and nothing missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from tessera.errors import DataError
from tessera.ingest.readers import Bad, Corpus, Position, Record
from tessera.ingest.sinks import LocalSink, RemoteSink, Written, packed_from_rows
from tessera.ingest.state import Counters, JobState, Progress

log = logging.getLogger(__name__)

MAX_REPORTED = 50  # skipped lines printed one by one per run; the rest are only counted


@dataclass(frozen=True)
class Checks:
    """Per-document limits (the service's defaults): over them a document is skipped as too_large."""

    max_id_bytes: int = 512
    max_text_bytes: int = 1_000_000
    max_metadata_bytes: int = 65_536


@dataclass
class JobOptions:
    corpus: Corpus
    collection: str
    state_path: Path
    buffer: int = 2048
    strict: bool = False
    restart: bool = False
    progress: bool | None = None  # None: a progress bar on a terminal only
    checks: Checks = field(default_factory=Checks)


def default_state_path(root: Path, corpus: Corpus, collection: str, target: str) -> Path:
    """``root/<collection>-<key>.state``: one checkpoint per (corpus, reading options, target, collection)."""
    key = json.dumps([str(corpus.path), corpus.options(), target, collection], sort_keys=True)
    return root / f"{collection}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.state"


class Job:
    """One run of an indexing job over ``sink``; ``items(start)`` yields the records from a position
    (the corpus reader, or the Ray pipeline whose records carry their vectors)."""

    def __init__(self, opts: JobOptions, sink: LocalSink | RemoteSink, items: Callable[[Position], Iterator]):
        self.opts = opts
        self.sink = sink
        self.items = items
        self.corpus = opts.corpus
        self.reported = 0

    # -- checkpoint --------------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {
            "corpus": self.corpus.identity(),
            "options": self.corpus.options(),
            "collection": self.opts.collection,
            "target": f"{self.sink.kind}:{self.sink.target}",
            "collection_created": str(self.sink.info.created_at),
        }

    def _resume_point(self, state: JobState) -> Progress | None:
        """The progress to continue from, a fresh start, or None when the job is complete already."""
        ident = self._identity()
        old = state.identity()
        if old is None or self.opts.restart:
            state.start(ident)
            return state.progress()
        job_keys = ("options", "collection", "target")
        if old["corpus"]["path"] != ident["corpus"]["path"] or any(old.get(k) != ident[k] for k in job_keys):
            raise DataError(
                f"{state.path} is the checkpoint of another job (corpus {old['corpus']['path']}, "
                f"collection {old.get('collection')!r}, {old.get('target')}); give another --state, or --restart"
            )
        progress = state.progress()
        why = None
        if old.get("collection_created") != ident["collection_created"]:
            why = "the collection was created anew since the last run"
        elif old["corpus"] != ident["corpus"]:
            why = "the corpus file changed since the last run"
        if why:
            log.warning("%s: indexing the whole corpus again (unchanged documents are not encoded again)", why)
            state.start(ident)
            return state.progress()
        if progress.done:
            return None
        if progress.position.offset:
            c = progress.counters
            log.info(
                "resuming at %s %d of %s (%d documents written, %d lines skipped before)",
                "row" if self.corpus.unit == "row" else "line",
                progress.position.line + 1,
                self.corpus.path.name,
                c.documents,
                sum(c.skipped.values()),
            )
        return progress

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        opts = self.opts
        state = JobState(opts.state_path)
        try:
            progress = self._resume_point(state)
            if progress is None:
                summary = self._summary(state.progress().counters, 0.0, complete=True)
                summary["already_complete"] = True
                log.info("nothing to do: the job is complete (give --restart to index the corpus again)")
                return summary
            return self._loop(state, progress)
        finally:
            state.close()

    def _loop(self, state: JobState, progress: Progress) -> dict:
        opts = self.opts
        counters = progress.counters
        if counters.runs == 0 and self.sink.kind == "server":
            counters.vectors = None  # the server encodes
        counters.runs += 1
        resumed = progress.position.offset > 0
        start = progress.position
        position = start
        committed = start
        t0 = time.perf_counter()
        base_seconds = counters.seconds
        run_docs = 0
        buffer: list[Record] = []
        buffer_ids: dict[str, int] = {}
        since_commit = 0
        bar = tqdm(
            total=self.corpus.size,
            initial=min(start.offset, self.corpus.size),
            unit=self.corpus.unit,
            unit_scale=True,
            desc=f"indexing {opts.collection}",
            disable=None if opts.progress is None else not opts.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )

        def commit(done: bool = False) -> None:
            nonlocal buffer, buffer_ids, since_commit, committed, run_docs
            if buffer:
                w = self._write(buffer)
                _add(counters, w, buffer)
                run_docs += len(buffer)
            counters.seconds = base_seconds + time.perf_counter() - t0
            counters.bytes = self._bytes(position)
            state.commit(((r.id, r.line) for r in buffer), Progress(position, done, counters))
            bar.update(max(0, min(position.offset, self.corpus.size) - committed.offset))
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"{counters.documents} docs, {run_docs / max(elapsed, 1e-9):.1f} docs/s", refresh=True)
            committed = position
            buffer, buffer_ids, since_commit = [], {}, 0

        try:
            for item in self.items(start):
                counters.read += 1
                since_commit += 1
                reason, message = self._check(item, buffer_ids, state)
                if reason is not None:
                    if opts.strict:
                        counters.read -= 1  # read again by a re-run
                        commit()  # everything before this line is durable
                        raise DataError(
                            f"{message} (stopped by --strict: the documents before it are indexed; fix the "
                            "line, or run again without --strict to skip it)"
                        )
                    counters.skip(reason, message)
                    self._report(message)
                else:
                    buffer.append(item)
                    buffer_ids[item.id] = item.line
                position = item.end
                if len(buffer) >= opts.buffer or since_commit >= 16 * opts.buffer:
                    commit()
            commit(done=True)
        finally:
            bar.close()
        return self._summary(counters, time.perf_counter() - t0, complete=True, resumed=resumed, run_docs=run_docs)

    def _check(self, item, buffer_ids: dict[str, int], state: JobState) -> tuple[str | None, str]:
        if isinstance(item, Bad):
            return "malformed", item.message
        where = (
            f"{self.corpus.path.name}:{item.line}"
            if self.corpus.unit != "row"
            else (f"{self.corpus.path.name}: row {item.line}")
        )
        c = self.opts.checks
        if not item.text.strip():
            return "empty", f"{where}: document {item.id!r} has an empty text"
        first = buffer_ids.get(item.id)
        if first is None:
            first = state.seen(item.id)
        if first is not None:
            unit = "row" if self.corpus.unit == "row" else "line"
            return "duplicate", f"{where}: duplicate id {item.id!r} (first at {unit} {first}); the first is kept"
        if len(item.id.encode("utf-8", "replace")) > c.max_id_bytes:
            return "too_large", f"{where}: id longer than {c.max_id_bytes} bytes"
        if len(item.text) > c.max_text_bytes // 4 and len(item.text.encode("utf-8", "replace")) > c.max_text_bytes:
            return "too_large", f"{where}: document {item.id!r} has more than {c.max_text_bytes} bytes of text"
        try:
            meta = json.dumps(item.metadata, allow_nan=False, ensure_ascii=False, default=str)
        except ValueError:
            return "malformed", f"{where}: metadata of {item.id!r} holds NaN or infinite numbers"
        if len(meta.encode("utf-8", "replace")) > c.max_metadata_bytes:
            return "too_large", f"{where}: metadata of {item.id!r} is larger than {c.max_metadata_bytes} bytes"
        item.metadata = json.loads(meta)  # plain JSON (Parquet dates and the like become strings)
        return None, ""

    def _write(self, buffer: list[Record]) -> Written:
        buffer.sort(key=lambda r: len(r.text))  # stable: similar lengths encode in one batch
        vectors = None
        if buffer[0].vectors is not None:
            vectors = packed_from_rows([r.vectors for r in buffer], self.sink.info.dim)
        w = self.sink.write(buffer, vectors)
        if vectors is not None:
            w.truncated = sum(bool(r.truncated) for r in buffer)
        return w

    def _bytes(self, position: Position) -> int:
        if self.corpus.unit == "row":  # Parquet: the file's share of the rows read
            size = self.corpus.path.stat().st_size
            return int(size * position.offset / max(self.corpus.size, 1))
        return position.offset

    def _report(self, message: str) -> None:
        self.reported += 1
        if self.reported <= MAX_REPORTED:
            tqdm.write(f"skipped: {message}", file=sys.stderr)
        elif self.reported == MAX_REPORTED + 1:
            tqdm.write("skipped: ... (further skipped lines are counted in the summary)", file=sys.stderr)

    def _summary(
        self, c: Counters, run_seconds: float, *, complete: bool, resumed: bool = False, run_docs: int = 0
    ) -> dict:
        out = {
            "collection": self.opts.collection,
            "corpus": str(self.corpus.path),
            "format": self.corpus.format,
            "target": f"{self.sink.kind}:{self.sink.target}",
            "complete": complete,
            "resumed": resumed,
            **{k: v for k, v in asdict(c).items() if k not in ("examples",)},
            "skipped_total": sum(c.skipped.values()),
            "skipped_examples": c.examples,
            "docs_per_s": round(c.documents / c.seconds, 2) if c.seconds else None,
            "run_seconds": round(run_seconds, 3),
            "run_documents": run_docs,
            "state": str(self.opts.state_path),
            "index": self.sink.collection_stats(),
        }
        out["seconds"] = round(c.seconds, 3)
        return out


def _add(c: Counters, w: Written, buffer: list[Record]) -> None:
    c.inserted += w.inserted
    c.updated += w.updated
    c.unchanged += w.unchanged
    c.documents += len(buffer)
    c.vectors = None if (w.vectors is None or c.vectors is None) else c.vectors + w.vectors
    c.truncated = None if (w.truncated is None or c.truncated is None) else c.truncated + w.truncated
    c.text_bytes += sum(len(r.text.encode("utf-8", "replace")) for r in buffer)


def format_summary(s: dict) -> str:
    """The summary as a few human-readable lines."""
    lines = []
    if s.get("already_complete"):
        lines.append(f"{s['collection']}: already complete (nothing to do; --restart indexes the corpus again)")
    rate = f", {s['docs_per_s']} docs/s" if s.get("docs_per_s") else ""
    lines.append(
        f"{s['collection']}: {s['documents']} documents ({s['inserted']} new, {s['updated']} changed, "
        f"{s['unchanged']} unchanged) in {s['seconds']:.1f} s{rate}"
        + (f" over {s['runs']} runs" if s["runs"] > 1 else "")
    )
    vec = "unknown (encoded by the server)" if s["vectors"] is None else str(s["vectors"])
    trunc = "not counted" if s["truncated"] is None else str(s["truncated"])
    how = f" ({s['encoder_backend']})" if s.get("encoder_backend") else ""
    lines.append(f"  vectors encoded{how}: {vec}; truncated at the model's doc_maxlen: {trunc}")
    lines.append(f"  read: {s['read']} lines, {s['bytes']} bytes of input, {s['text_bytes']} bytes of text")
    sk = s["skipped"]
    lines.append(
        f"  skipped: {s['skipped_total']} (malformed {sk['malformed']}, empty {sk['empty']}, "
        f"duplicate id {sk['duplicate']}, too large {sk['too_large']})"
    )
    for ex in s["skipped_examples"][:10]:
        lines.append(f"    {ex}")
    ix = s["index"]
    lines.append(
        f"  collection now: {ix['documents']} documents, {ix['vectors']} vectors, {ix['disk_bytes']} bytes on disk"
    )
    return "\n".join(lines)
