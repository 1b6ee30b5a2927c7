"""The issue's check on real data (slow; skipped without SciFact): an index built from half of SciFact
with the other half added later, and one filled in the service's batches of 256 documents, stay within
1 nDCG@10 point of a fresh build (`plaid` on the 2-bit codes; the `default` model's encodings are
cached by `tessera bench search`, the first run encodes the corpus: ~6 minutes on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tessera.index import MultiVectorIndex, bench

SCIFACT = Path(os.environ.get("TESSERA_SCIFACT", Path(__file__).resolve().parents[2] / ".." / "shared/data/scifact"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason="SciFact data not present"),
]


def _ndcg10(index: MultiVectorIndex, data) -> float:
    return bench._ir_metrics(index.search(data.queries, k=10, method="plaid"), data)["ndcg@10"]


def test_incremental_builds_stay_within_one_point_of_a_fresh_build():
    torch.set_num_threads(2)
    data = bench.load_encoded(SCIFACT, "default", "test", bench.default_cache_dir())
    n = len(data.doc_ids)
    fresh = MultiVectorIndex.create(None, data.docs.dim)
    fresh.add(data.doc_ids, data.docs)
    reference = _ndcg10(fresh, data)
    fresh.close()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    halves = [perm[: n // 2], perm[n // 2 :]]
    batches = [list(range(i, min(n, i + 256))) for i in range(0, n, 256)]
    for name, parts in (("half, then half", halves), ("batches of 256", batches)):
        index = MultiVectorIndex.create(None, data.docs.dim)  # auto_retrain on, as collections have it
        for part in parts:
            index.add([data.doc_ids[i] for i in part], data.docs.select(part))
            index.wait_for_maintenance()
        got = _ndcg10(index, data)
        index.close()
        assert got >= reference - 0.01, f"{name}: nDCG@10 {got:.4f} against {reference:.4f} fresh"
