"""Reading BEIR-layout folders (corpus.jsonl, queries.jsonl, qrels/*.tsv) with clear errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tessera.errors import DataError


@dataclass
class Document:
    id: str
    text: str
    title: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def full_text(self) -> str:
        """Title and body joined the way BEIR evaluations index them."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass
class BeirDataset:
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    path: Path | None = None

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line; a malformed line raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _require_id(obj: dict, path: Path, lineno: int) -> str:
    if "_id" not in obj:
        raise DataError(f"{path}:{lineno}: missing '_id' field")
    return str(obj["_id"])


def load_corpus(path: str | Path) -> dict[str, Document]:
    path = Path(path)
    corpus: dict[str, Document] = {}
    for lineno, obj in iter_jsonl(path):
        doc_id = _require_id(obj, path, lineno)
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: document {doc_id!r} has no 'text' string")
        title = obj.get("title") or ""
        meta = obj.get("metadata") or {}
        corpus[doc_id] = Document(doc_id, text, str(title), meta if isinstance(meta, dict) else {})
    if not corpus:
        raise DataError(f"{path}: no documents")
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        qid = _require_id(obj, path, lineno)
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: query {qid!r} has no 'text' string")
        queries[qid] = text
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (query-id, corpus-id, score) with an optional header line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: qrels file not found")
    qrels: dict[str, dict[str, int]] = {}
    with path.open("r", encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(row) < 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(row)}")
            try:
                score = int(float(row[2]))
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {row[2]!r} is not a number") from None
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
    return qrels


def load_beir(path: str | Path, split: str = "test", corpus: dict[str, Document] | None = None) -> BeirDataset:
    """Load a BEIR folder; qrels must name only known query and document ids."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected corpus.jsonl, queries.jsonl, qrels/)")
    if corpus is None:
        corpus = load_corpus(root / "corpus.jsonl")
    queries = load_queries(root / "queries.jsonl")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise DataError(f"{qrels_path}: no qrels for split {split!r} (available: {', '.join(available) or 'none'})")
    qrels = load_qrels(qrels_path)
    unknown_q = sorted(set(qrels) - set(queries))
    if unknown_q:
        raise DataError(
            f"{qrels_path}: {len(unknown_q)} query id(s) not in queries.jsonl, e.g. {unknown_q[:3]}"
        )
    unknown_d = sorted({d for rel in qrels.values() for d in rel} - set(corpus))
    if unknown_d:
        raise DataError(f"{qrels_path}: {len(unknown_d)} document id(s) not in corpus.jsonl, e.g. {unknown_d[:3]}")
    split_queries = {qid: queries[qid] for qid in qrels}
    return BeirDataset(corpus=corpus, queries=split_queries, qrels=qrels, path=root)
