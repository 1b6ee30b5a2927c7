"""Indexing-job tests: a tiny random model, small generated corpora in several formats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from service_helpers import make_docs, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_bert_dir, tmp_path_factory):
    return make_tiny_model(tiny_bert_dir, tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


def write_beir(path: Path, docs: list[dict]) -> Path:
    """A BEIR corpus.jsonl: _id, title (the first word), text (the rest), metadata."""
    with path.open("w", encoding="utf-8") as fh:
        for d in docs:
            title, _, text = d["text"].partition(" ")
            fh.write(json.dumps({"_id": d["id"], "title": title, "text": text, "metadata": d["metadata"]}) + "\n")
    return path


@pytest.fixture(scope="session")
def docs() -> list[dict]:
    return make_docs(120, seed=3)
