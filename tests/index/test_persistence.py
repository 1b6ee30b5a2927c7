"""On-disk round trips, crash safety and detection of missing, corrupt, truncated or newer files."""

from __future__ import annotations

import json

import pytest
from index_helpers import build, recall

from tessera.errors import TesseraError
from tessera.index import (
    IndexCorruptError,
    IndexExistsError,
    IndexNotFoundError,
    IndexVersionError,
    MultiVectorIndex,
)
from tessera.index import core as core_module


def _ids(hits):
    return [[h.id for h in row] for row in hits]


@pytest.mark.parametrize("keep_vectors", [False, True])
def test_round_trip_with_updates(tmp_path, corpus, doc_ids, queries, keep_vectors):
    docs = corpus.docs
    path = tmp_path / "idx"
    index = build(docs.select(range(200)), doc_ids[:200], path, keep_vectors=keep_vectors)
    index.add(doc_ids[200:300], docs.select(range(200, 300)))
    index.delete(doc_ids[:50:2])
    index.add([doc_ids[1]], docs.select([399]))  # upsert
    expected = index.search(queries, k=10, method="exact")
    stats = index.stats()
    index.close()

    reopened = MultiVectorIndex.open(path)
    assert sorted(reopened.ids()) == sorted(index.ids())
    got = reopened.search(queries, k=10, method="exact")
    assert _ids(got) == _ids(expected)
    assert [h.score for h in got[0]] == pytest.approx([h.score for h in expected[0]], rel=1e-6)
    for key in ("documents", "vectors", "segments", "tombstones", "ncentroids", "full_vector_bytes"):
        assert reopened.stats()[key] == stats[key]
    assert reopened.stats()["bytes_per_vector_on_disk"] > 0
    # further changes after reopening persist as well; merge removes the old files
    reopened.delete([doc_ids[1]])
    reopened.merge()
    reopened.flush()
    files = {f.name for f in path.iterdir()}
    assert sum(name.endswith(".seg") for name in files) == 1
    assert not any(".del-" in name for name in files)
    again = MultiVectorIndex.open(path)
    assert doc_ids[1] not in again and len(again) == len(reopened)
    assert _ids(again.search(queries, k=5, method="exact")) == _ids(
        reopened.search(queries, k=5, method="exact")
    )


def test_crash_between_segment_and_manifest_keeps_previous_state(
    tmp_path, corpus, doc_ids, queries, monkeypatch
):
    docs = corpus.docs
    path = tmp_path / "idx"
    index = build(docs.select(range(100)), doc_ids[:100], path)
    index.flush()
    before = index.search(queries, k=5, method="exact")

    index.add(doc_ids[100:200], docs.select(range(100, 200)))
    index.delete(doc_ids[:10])

    def crash(*args, **kwargs):
        raise OSError("simulated power cut before the manifest swap")

    monkeypatch.setattr(core_module, "write_manifest", crash)
    with pytest.raises(OSError, match="simulated"):
        index.flush()
    monkeypatch.undo()
    # the new segment and tombstone files were written, but the old manifest is still the truth
    assert len(list(path.glob("*.seg"))) == 2
    reopened = MultiVectorIndex.open(path)
    assert len(reopened) == 100 and doc_ids[0] in reopened and doc_ids[150] not in reopened
    assert _ids(reopened.search(queries, k=5, method="exact")) == _ids(before)
    # the next successful flush of the reopened index removes the orphans
    reopened.flush()
    assert len(list(path.glob("*.seg"))) == 1


def test_interrupted_file_write_leaves_no_partial_file(tmp_path, corpus, doc_ids, monkeypatch):
    from tessera.index import storage

    path = tmp_path / "idx"
    index = build(corpus.docs.select(range(50)), doc_ids[:50], path)
    index.flush()
    index.add(doc_ids[50:60], corpus.docs.select(range(50, 60)))
    real = storage.os.fsync
    calls = {"n": 0}

    def failing_fsync(fd):
        calls["n"] += 1
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        index.flush()
    monkeypatch.setattr(storage.os, "fsync", real)
    assert calls["n"] >= 1
    assert not [f for f in path.iterdir() if ".tmp-" in f.name]
    assert len(MultiVectorIndex.open(path)) == 50


@pytest.fixture()
def saved(tmp_path, corpus, doc_ids):
    path = tmp_path / "idx"
    index = build(corpus.docs.select(range(100)), doc_ids[:100], path)
    index.delete(doc_ids[:5])
    index.close()
    return path


def _segment_file(path):
    return next(path.glob("*.seg"))


def test_corrupt_segment_is_reported_by_name(saved):
    seg = _segment_file(saved)
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match=f"{seg.name} is corrupt"):
        MultiVectorIndex.open(saved)


def test_truncated_segment_is_reported_by_name(saved):
    seg = _segment_file(saved)
    seg.write_bytes(seg.read_bytes()[:-100])
    with pytest.raises(IndexCorruptError, match=f"{seg.name} is truncated"):
        MultiVectorIndex.open(saved)


@pytest.mark.parametrize("pattern", ["*.seg", "*.codec", "*.del-*"])
def test_missing_file_is_reported_by_name(saved, pattern):
    victim = next(saved.glob(pattern))
    victim.unlink()
    with pytest.raises(IndexCorruptError, match=f"{victim.name} is missing"):
        MultiVectorIndex.open(saved)


def test_corrupt_manifest(saved):
    man = saved / "manifest.json"
    man.write_text(man.read_text()[:-20])
    with pytest.raises(IndexCorruptError, match="manifest.json"):
        MultiVectorIndex.open(saved)


def test_edited_manifest_fails_its_checksum(saved):
    man = saved / "manifest.json"
    doc = json.loads(man.read_text())
    doc["dim"] = 999
    man.write_text(json.dumps(doc))
    with pytest.raises(IndexCorruptError, match="checksum"):
        MultiVectorIndex.open(saved)


def test_newer_format_version_is_refused(saved):
    man = saved / "manifest.json"
    doc = json.loads(man.read_text())
    doc["format_version"] = 99
    man.write_text(json.dumps(doc))
    with pytest.raises(IndexVersionError, match="newer"):
        MultiVectorIndex.open(saved)


def test_missing_index_and_existing_folder(tmp_path, saved):
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        MultiVectorIndex.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="manifest.json is missing"):
        MultiVectorIndex.open(tmp_path / "empty")
    with pytest.raises(IndexExistsError, match="already exists"):
        MultiVectorIndex.create(saved, 64)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(IndexExistsError, match="not empty"):
        MultiVectorIndex.create(tmp_path / "other", 64)
    assert issubclass(IndexCorruptError, TesseraError)


def test_empty_on_disk_index_opens(tmp_path):
    MultiVectorIndex.create(tmp_path / "e", 64).close()
    index = MultiVectorIndex.open(tmp_path / "e")
    assert len(index) == 0 and index.dim == 64


def test_product_quantised_index_round_trips_and_needs_format_2(tmp_path, corpus, doc_ids, queries, truth):
    """A "pq" index searches like a scalar one (better on the codes alone), reopens identically, and its
    manifest says format version 2 so that a Tessera that knows only version 1 refuses it; scalar
    indexes stay at version 1."""
    docs = corpus.docs
    pq = build(docs, doc_ids, tmp_path / "pq", quantizer="pq")
    scalar = build(docs, doc_ids, tmp_path / "scalar")
    params = {"full_rerank": False}
    got = {name: index.search(queries, k=10, method="plaid", params=params) for name, index in
           (("pq", pq), ("scalar", scalar))}
    rec = {name: recall(hits, truth, 10) for name, hits in got.items()}
    assert rec["pq"] >= rec["scalar"] - 0.02 and rec["pq"] >= 0.8
    xtr = pq.search(queries, k=10, method="xtr", params={"exact_tokens": False})  # lookup tables over the codes
    assert all(len(row) == 10 for row in xtr) and recall(xtr, truth, 10) >= 0.6
    pq.close()
    scalar.close()
    versions = {n: json.loads((tmp_path / n / "manifest.json").read_text())["format_version"] for n in ("pq", "scalar")}
    assert versions == {"pq": 2, "scalar": 1}
    reopened = MultiVectorIndex.open(tmp_path / "pq")
    assert reopened.settings["quantizer"] == "pq" and reopened.snapshot.codec.quantizer == "pq"
    assert _ids(reopened.search(queries, k=10, method="plaid", params=params)) == _ids(got["pq"])
    reopened.retrain()  # re-training keeps the quantiser
    assert reopened.snapshot.codec.quantizer == "pq" and reopened.snapshot.codec is not pq.snapshot.codec
    assert recall(reopened.search(queries, k=10, method="plaid", params=params), truth, 10) >= 0.8
    reopened.close()
    with pytest.raises(ValueError, match="index setting quantizer"):
        MultiVectorIndex.create(None, docs.dim, quantizer="opq")
