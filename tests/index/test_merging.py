"""The merge policy (newest segments merged geometrically) and the validation of index settings."""

from __future__ import annotations

import math

import pytest
import torch
from index_helpers import DIM, build

from tessera.index import MultiVectorIndex
from tessera.index.core import DEFAULT_SETTINGS, merge_run
from tessera.index.segment import Segment
from tessera.index.storage import read_manifest, write_manifest
from tessera.packed import PackedDocuments


@pytest.mark.parametrize(
    "sizes, ratio, cap, start",
    [
        ([], 2.0, 8, 0),
        ([5], 2.0, 8, 0),  # one segment: nothing to merge (start == len - 1)
        ([10, 1], 2.0, 8, 1),  # the older one is more than twice as big: kept apart
        ([2, 1], 2.0, 8, 0),
        ([100, 3, 1, 1], 2.0, 8, 1),  # 1 <= 2x1, 3 <= 2x2, 100 > 2x5
        ([100, 3, 1, 1], 0.0, 8, 3),  # ratio 0: only the cap merges
        ([100, 50, 20, 5], 0.0, 2, 1),  # the cap: at most 2 segments after the merge
        ([100, 0, 5], 0.0, 8, 1),  # an empty segment before the run is taken even at ratio 0
    ],
)
def test_merge_run(sizes, ratio, cap, start):
    assert merge_run(sizes, ratio, cap) == start


def _tiny_docs(n: int, seed: int) -> PackedDocuments:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 5, (n,), generator=g)
    vectors = torch.nn.functional.normalize(torch.randn(int(lengths.sum()), DIM, generator=g), dim=-1)
    return PackedDocuments(vectors.half(), torch.zeros(vectors.shape[0], dtype=torch.int32), lengths)


def test_many_small_adds_rewrite_each_vector_a_few_times(corpus, doc_ids):
    """500 adds of one document: the merges rewrite O(log n) times the data (the old policy, merging
    all but the 4 biggest segments past 8, rewrote it 14 times here and O(n) times in general) and
    never leave more than max_segments (8) segments, nor more than log2(adds) + 2."""
    index = build(corpus.docs.select(range(1)), doc_ids[:1], ncentroids=64)
    added = rewritten = index.stats()["vectors"]
    for i in range(1, 500):
        before = {id(s) for s in index.snapshot.segments}
        docs = _tiny_docs(1, i)
        index.add([f"tiny-{i}"], docs)
        added += docs.vectors.shape[0]
        rewritten += sum(s.n_vectors for s in index.snapshot.segments if id(s) not in before)
        assert index.stats()["segments"] <= min(8, math.log2(i + 1) + 2)
    assert rewritten / added <= 8  # 6.6 measured
    assert len(index) == 500


def test_small_index_ends_in_few_segments_and_merging_keeps_results(corpus, doc_ids, queries):
    def adds(**settings) -> MultiVectorIndex:
        index = build(corpus.docs.select(range(20)), doc_ids[:20], **settings)
        for start in range(20, len(doc_ids), 20):
            end = min(start + 20, len(doc_ids))
            index.add(doc_ids[start:end], corpus.docs.select(range(start, end)))
        return index

    merged, apart = adds(), adds(merge_ratio=0, max_segments=100)
    assert apart.stats()["segments"] == 20
    assert merged.stats()["segments"] <= 3  # the old policy left 8 here
    assert sorted(merged.ids()) == sorted(doc_ids)
    for method in ("exact", "plaid", "xtr"):
        a, b = apart.search(queries, k=10, method=method), merged.search(queries, k=10, method=method)
        assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]


def test_fully_deleted_segments_are_dropped_at_the_next_add(corpus, doc_ids):
    docs = corpus.docs
    index = build(docs.select(range(50)), doc_ids[:50], merge_ratio=0)
    index.add(doc_ids[50:100], docs.select(range(50, 100)))
    index.add(doc_ids[100:110], docs.select(range(100, 110)))
    assert index.stats()["segments"] == 3
    kept = index.snapshot.segments[1:]
    index.delete(doc_ids[:50])
    assert index.stats()["segments"] == 3  # a delete only marks tombstones
    index.add(doc_ids[110:120], docs.select(range(110, 120)))
    segs = index.snapshot.segments
    assert len(segs) == 3 and segs[:2] == kept  # the dead one is gone, nothing else rewritten
    assert sorted(index.ids()) == sorted(doc_ids[50:120])


def test_merge_ratio_round_trips_and_old_manifests_get_the_default(corpus, doc_ids, tmp_path):
    index = build(corpus.docs.select(range(30)), doc_ids[:30], tmp_path / "a", merge_ratio=0.5)
    index.close()
    assert MultiVectorIndex.open(tmp_path / "a").settings["merge_ratio"] == 0.5
    # an index written before the setting existed
    doc = read_manifest(tmp_path / "a")
    del doc["settings"]["merge_ratio"]
    version = doc.pop("format_version")
    doc.pop("format")
    write_manifest(tmp_path / "a", doc, version)
    assert MultiVectorIndex.open(tmp_path / "a").settings["merge_ratio"] == DEFAULT_SETTINGS["merge_ratio"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_segments": "8"}, "max_segments must be an integer >= 1, got '8'"),
        ({"max_segments": 0}, "max_segments must be an integer >= 1"),
        ({"max_segments": 4.0}, "max_segments must be an integer"),
        ({"merge_ratio": -1}, "merge_ratio must be a number >= 0"),
        ({"merge_ratio": float("nan")}, "merge_ratio must be a number"),
        ({"retrain_drift": 0.5}, "retrain_drift must be a number >= 1"),
        ({"seed": 2**40}, "seed must be an integer from 0 to 2147483647"),
        ({"max_k": True}, "max_k must be an integer"),
        ({"ncentroids": 0}, "ncentroids must be an integer >= 1 or null"),
        ({"auto_retrain": "yes"}, "auto_retrain must be true or false"),
        ({"keep_vectors": 1}, "keep_vectors must be true or false"),
        ({"quantizer": "opq"}, "quantizer must be one of scalar, pq"),
        ({"colour": 1}, "unknown index settings: colour"),
    ],
)
def test_bad_settings_are_refused_at_creation(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        MultiVectorIndex.create(tmp_path / "idx", DIM, **settings)
    assert not (tmp_path / "idx").exists() or not any((tmp_path / "idx").iterdir())


def test_good_settings_are_accepted():
    index = MultiVectorIndex.create(
        None, DIM, ncentroids=None, merge_ratio=0, max_segments=1, retrain_drift=2, seed=2**31 - 1, keep_vectors=True
    )
    assert index.settings["merge_ratio"] == 0 and index.settings["ncentroids"] is None


def test_a_merge_keeps_the_originals_that_a_retraining_needs(corpus, doc_ids):
    """Segments added while a re-training is due keep their fp16 originals until it has run; merged
    with a segment without them, the merge keeps them (the other part decompressed), else the
    re-training would re-encode drifted vectors from codes that fit them badly."""
    index = build(corpus.docs.select(range(100)), doc_ids[:100], merge_ratio=0)
    index.add(doc_ids[100:150], corpus.docs.select(range(100, 150)))
    snap = index.snapshot
    old, new = snap.segments
    assert old.vectors is None and new.vectors is None
    new.vectors = corpus.docs.vectors[corpus.docs.offsets[100] : corpus.docs.offsets[150]].clone()
    parts = [(old, torch.arange(old.n_docs)), (new, torch.arange(new.n_docs))]
    merged = Segment.from_parts("seg-x", parts, snap.codec)
    every = torch.arange(old.n_vectors)
    assert torch.equal(merged.vectors[: old.n_vectors], snap.codec.decompress(old.codes, old.residuals).half())
    assert torch.equal(merged.vectors[old.n_vectors :], new.vectors)
    assert torch.equal(old.originals(snap.codec, every), merged.vectors[: old.n_vectors])
    assert Segment.from_parts("seg-y", parts[:1], snap.codec).vectors is None  # none kept: none made
