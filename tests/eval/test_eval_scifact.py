"""Reference figures on SciFact test (slow; skipped when the data is absent)."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import scifact_dir

from tessera.eval import evaluate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (scifact_dir() / "corpus.jsonl").is_file(), reason="SciFact data not present"),
]


def test_bm25_scifact():
    """BEIR publishes 0.665 (Elasticsearch), Pyserini 0.679; bm25s Lucene k1=1.5 b=0.75 gives 0.686."""
    result = evaluate(scifact_dir(), "bm25", use_cache=False)
    assert result["queries"] == 300 and result["docs"] == 5183
    assert 0.65 <= result["ndcg@10"] <= 0.70


def test_minilm_scifact():
    """all-MiniLM-L6-v2 reaches 64.5 nDCG@10 (MTEB). Uses the default encoding cache: the first run
    encodes 5,183 documents (~10 minutes on 1 CPU thread), later runs take seconds."""
    torch.set_num_threads(1)
    result = evaluate(scifact_dir(), "minilm")
    assert abs(result["ndcg@10"] - 0.645) <= 0.01


def test_default_model_scifact():
    """The shipped `default` model with exact MaxSim: nDCG@10 >= 0.68, above both baselines."""
    result = evaluate(scifact_dir(), "default")
    assert result["queries"] == 300 and result["docs"] == 5183
    assert result["ndcg@10"] >= 0.68
