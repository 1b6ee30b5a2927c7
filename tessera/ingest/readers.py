"""Streaming corpus readers: BEIR corpus.jsonl, plain JSONL, CSV and Parquet.

A reader yields, in file order, a ``Record`` for each document or a ``Bad`` for each line it cannot
read, each with its line (row) number and the ``Position`` just after it, so a job can resume there.
Nothing is loaded whole: text files are read line by line, Parquet one record batch at a time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tessera.errors import DataError

FORMATS = ("auto", "beir", "jsonl", "csv", "parquet")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_CSV_SUFFIXES = (".csv", ".tsv")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_FIELD_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Position:
    """Where reading stands: ``offset`` is a byte offset (text formats) or a row index (Parquet);
    ``line`` is the number of lines (rows) before it."""

    offset: int = 0
    line: int = 0


@dataclass
class Record:
    """A document from line (row) ``line``; the Ray pipeline fills in its encoding."""

    id: str
    text: str
    metadata: dict
    line: int
    end: Position
    vectors: tuple[bytes, bytes] | None = None  # (fp16 vectors, int32 token ids), as bytes
    truncated: bool | None = None


@dataclass
class Bad:
    """A line that is not a document: ``message`` says why, naming the file and line."""

    line: int
    message: str
    end: Position


@dataclass(frozen=True)
class Fields:
    """Which fields hold the id, the text (joined by spaces) and the metadata (``("*",)``: all others)."""

    id: str = "id"
    text: tuple[str, ...] = ("text",)
    metadata: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"id": self.id, "text": list(self.text), "metadata": list(self.metadata)}


BEIR_FIELDS = Fields("_id", ("title", "text"), ("metadata",))


@dataclass
class Corpus:
    """A corpus file and how to read it; ``records(start)`` streams it from a position."""

    path: Path
    format: str
    fields: Fields
    delimiter: str = ","
    unit: str = "B"  # what ``size`` and positions count: bytes, or rows for Parquet
    size: int = 0
    _header: list[str] = field(default_factory=list, repr=False)

    def identity(self) -> dict:
        """What a resumable job must find unchanged: the path, size, mtime and first 64 KiB."""
        st = self.path.stat()
        with self.path.open("rb") as fh:
            head = hashlib.sha256(fh.read(65536)).hexdigest()
        return {"path": str(self.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head": head}

    def options(self) -> dict:
        """The reading options (they decide which documents a line yields)."""
        return {"format": self.format, "fields": self.fields.to_dict(), "delimiter": self.delimiter}

    def records(self, start: Position = Position(), stop: int | None = None) -> Iterator[Record | Bad]:
        """Records from ``start`` up to offset ``stop`` (exclusive; None: the end)."""
        if self.format in ("beir", "jsonl"):
            return self._jsonl(start, stop)
        if self.format == "csv":
            return self._csv(start, stop)
        return self._parquet(start, stop)

    # -- JSON lines -------------------------------------------------------------------------------
    def _jsonl(self, start: Position, stop: int | None) -> Iterator[Record | Bad]:
        where = self.path.name
        with self.path.open("rb") as fh:
            fh.seek(start.offset)
            offset, line = start.offset, start.line
            while stop is None or offset < stop:
                raw = fh.readline()
                if not raw:
                    return
                offset += len(raw)
                line += 1
                end = Position(offset, line)
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
                except UnicodeDecodeError:
                    yield Bad(line, f"{where}:{line}: not valid UTF-8", end)
                    continue
                except json.JSONDecodeError as exc:
                    yield Bad(line, f"{where}:{line}: malformed JSON ({exc.msg} at column {exc.colno})", end)
                    continue
                if not isinstance(obj, dict):
                    yield Bad(line, f"{where}:{line}: expected a JSON object, got {type(obj).__name__}", end)
                    continue
                yield self._record(obj, line, end, where)

    # -- CSV --------------------------------------------------------------------------------------
    def _csv(self, start: Position, stop: int | None) -> Iterator[Record | Bad]:
        where = self.path.name
        header = self._header
        with self.path.open("rb") as fh:
            state = {"offset": 0, "line": 0}
            if start.offset == 0:
                fh.readline()  # the header
                state["offset"], state["line"] = fh.tell(), 1
            else:
                fh.seek(start.offset)
                state["offset"], state["line"] = start.offset, start.line

            def lines() -> Iterator[str]:
                while stop is None or state["offset"] < stop:
                    raw = fh.readline()
                    if not raw:
                        return
                    state["offset"] += len(raw)
                    state["line"] += 1
                    yield raw.decode("utf-8", errors="surrogateescape")

            reader = csv.reader(lines(), delimiter=self.delimiter, strict=True)
            while True:
                first = state["line"] + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield Bad(first, f"{where}:{first}: malformed CSV ({exc})", self._pos(state))
                    continue
                end = self._pos(state)
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if any(_has_surrogates(v) for v in row):
                    yield Bad(first, f"{where}:{first}: not valid UTF-8", end)
                    continue
                if len(row) != len(header):
                    yield Bad(first, f"{where}:{first}: expected {len(header)} columns, got {len(row)}", end)
                    continue
                yield self._record(dict(zip(header, row, strict=True)), first, end, where)

    @staticmethod
    def _pos(state: dict) -> Position:
        return Position(state["offset"], state["line"])

    # -- Parquet ----------------------------------------------------------------------------------
    def _parquet(self, start: Position, stop: int | None) -> Iterator[Record | Bad]:
        pq = _pyarrow_parquet()
        where = self.path.name
        pf = pq.ParquetFile(self.path)
        columns = self._parquet_columns(pf)
        row = 0
        stop = self.size if stop is None else min(stop, self.size)
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row + n <= start.offset:
                row += n
                continue
            if row >= stop:
                return
            for batch in pf.iter_batches(batch_size=1024, row_groups=[g], columns=columns):
                rows = batch.to_pylist()
                for obj in rows:
                    row += 1
                    if row <= start.offset:
                        continue
                    if row > stop:
                        return
                    yield self._record(obj, row, Position(row, row), where, unit="row")

    def _parquet_columns(self, pf) -> list[str] | None:
        names = pf.schema_arrow.names
        if self.fields.metadata == ("*",):
            return None
        return [c for c in (self.fields.id, *self.fields.text, *self.fields.metadata) if c in names]

    # -- one object -> Record or Bad ----------------------------------------------------------------
    def _record(self, obj: dict, line: int, end: Position, where: str, unit: str = "line") -> Record | Bad:
        f = self.fields
        at = f"{where}:{line}" if unit == "line" else f"{where}: row {line}"
        doc_id = obj.get(f.id)
        if doc_id is None:
            return Bad(line, f"{at}: missing id field {f.id!r}", end)
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            kind = type(doc_id).__name__
            return Bad(line, f"{at}: id field {f.id!r} must be a string or an integer, got {kind}", end)
        doc_id = str(doc_id)
        if not doc_id.strip():
            return Bad(line, f"{at}: empty id", end)
        parts = []
        present = False
        for name in f.text:
            value = obj.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                return Bad(line, f"{at}: field {name!r} must be a string, got {type(value).__name__}", end)
            present = True
            if value:
                parts.append(value)
        if not present:
            names = " or ".join(repr(n) for n in f.text)
            return Bad(line, f"{at}: document {doc_id!r} has no {names} field", end)
        text = parts[0] if len(parts) == 1 else " ".join(parts).strip()
        if f.metadata == ("metadata",) and self.format == "beir":
            meta = obj.get("metadata")
            meta = dict(meta) if isinstance(meta, dict) else {}
        elif f.metadata == ("*",):
            skip = {f.id, *f.text}
            meta = {k: v for k, v in obj.items() if k not in skip}
        else:
            meta = {k: obj[k] for k in f.metadata if k in obj}
        return Record(doc_id, text, meta, line, end)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "reading Parquet needs pyarrow: pip install 'tessera[parquet]' (or pip install pyarrow)"
        ) from None
    return pq


def detect_format(path: Path) -> str:
    """The format of a corpus file from its name (and, for JSON lines, its first object)."""
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_JSONL_SUFFIXES):
        return "beir" if name == "corpus.jsonl" or _first_object_has(path, "_id") else "jsonl"
    raise DataError(
        f"{path}: unknown corpus format (expected .jsonl, .ndjson, .json, .csv, .tsv, .parquet or .pq); "
        "give --format beir|jsonl|csv|parquet"
    )


def _first_object_has(path: Path, key: str) -> bool:
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except ValueError:
                    return False
                return isinstance(obj, dict) and key in obj
    return False


def open_corpus(
    path: str | Path,
    fmt: str = "auto",
    *,
    id_field: str | None = None,
    text_fields: str | None = None,
    metadata_fields: str | None = None,
    delimiter: str | None = None,
) -> Corpus:
    """Check the corpus file and its fields (columns) and return a reader for it.

    ``text_fields`` and ``metadata_fields`` are comma-separated; ``metadata_fields="*"`` keeps every
    field that is neither the id nor a text field. A folder means its ``corpus.jsonl`` (BEIR)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.exists():
        raise DataError(f"{path}: corpus file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    path = path.resolve()
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    custom = any(v is not None for v in (id_field, text_fields, metadata_fields))
    if fmt == "auto":
        fmt = detect_format(path)
        if fmt == "beir" and custom:
            fmt = "jsonl"
    if fmt == "beir":
        if custom:
            raise DataError("--format beir has fixed fields (_id, title, text, metadata); use --format jsonl")
        fields = BEIR_FIELDS
    else:
        text = tuple(t.strip() for t in (text_fields or "text").split(",") if t.strip())
        meta = tuple(m.strip() for m in (metadata_fields or "").split(",") if m.strip())
        if not text:
            raise DataError("--text-field needs at least one field name")
        fields = Fields(id_field or "id", text, meta)
    corpus = Corpus(path, fmt, fields, delimiter=delimiter or ("\t" if path.suffix.lower() == ".tsv" else ","))
    if fmt == "csv":
        _open_csv(corpus)
    elif fmt == "parquet":
        _open_parquet(corpus)
    else:
        corpus.size = path.stat().st_size
    return corpus


def _check_columns(corpus: Corpus, names: list[str]) -> None:
    f = corpus.fields
    missing = [c for c in (f.id, *f.text) if c not in names]
    missing += [c for c in f.metadata if c != "*" and c not in names]
    if missing:
        raise DataError(
            f"{corpus.path}: no column(s) {', '.join(repr(m) for m in missing)} "
            f"(columns: {', '.join(names) or 'none'}); choose them with --id-field/--text-field/--metadata-fields"
        )


def _open_csv(corpus: Corpus) -> None:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    with corpus.path.open("rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace")
    if not first.strip():
        raise DataError(f"{corpus.path}: empty CSV file (the first line must name the columns)")
    header = next(csv.reader(io.StringIO(first), delimiter=corpus.delimiter))
    corpus._header = [h.strip().lstrip("\ufeff") for h in header]
    _check_columns(corpus, corpus._header)
    corpus.size = os.path.getsize(corpus.path)


def _open_parquet(corpus: Corpus) -> None:
    pq = _pyarrow_parquet()
    try:
        pf = pq.ParquetFile(corpus.path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{corpus.path}: not a readable Parquet file ({exc})") from None
    _check_columns(corpus, list(pf.schema_arrow.names))
    corpus.unit = "row"
    corpus.size = pf.metadata.num_rows
