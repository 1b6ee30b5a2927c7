"""Helpers for the eval tests: a small BEIR folder writer and the location of SciFact."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Each query shares its distinctive words with exactly one document (words from the tiny BERT vocabulary).
DOCS = {
    "d1": ("cancer therapy", "tumor drug treatment for cancer patients in clinical study"),
    "d2": ("brain", "brain activity and blood response in mice"),
    "d3": ("virus", "virus immune response of human cells to the virus"),
    "d4": ("gene expression", "gene expression levels and dna rna analysis"),
    "d5": ("city", "the city and the country under the sun and moon"),
    "d6": ("animals", "cat dog fish bird near a tree by the water"),
    "d7": ("colors", "red green blue light and dark"),
    "d8": ("search", "query document search index vector token score retrieval"),
}
QUERIES = {
    "q1": "cancer tumor drug",
    "q2": "brain activity in mice",
    "q3": "virus immune response",
    "q4": "gene expression dna",
    "q5": "dog fish bird",
    "q6": "search index retrieval",
}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}, "q5": {"d6": 1}, "q6": {"d8": 1}}


def write_beir(
    root: Path,
    docs: dict[str, tuple[str, str]] | None = None,
    queries: dict[str, str] | None = None,
    qrels: dict[str, dict[str, int]] | None = None,
    split: str = "test",
) -> Path:
    """Write corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv (with a header line) under ``root``."""
    docs = DOCS if docs is None else docs
    queries = QUERIES if queries is None else queries
    qrels = QRELS if qrels is None else qrels
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as fh:
        for doc_id, (title, text) in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [
        f"{q}\t{d}\t{s}" for q, rel in qrels.items() for d, s in rel.items()
    ]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def scifact_dir() -> Path:
    env = os.environ.get("TESSERA_SCIFACT")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared/data/scifact"
