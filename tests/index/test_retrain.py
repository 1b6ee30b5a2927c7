"""Residual drift is watched; centroids are re-trained in the background and swapped in."""

from __future__ import annotations

import pytest
from index_helpers import build, recall

from tessera.index import MultiVectorIndex


@pytest.fixture(scope="module")
def split(corpus, doc_ids):
    """Documents of topics 0-9 first, the other topics later (a drifted second half)."""
    first = (corpus.topics < 10).nonzero().flatten().tolist()
    rest = (corpus.topics >= 10).nonzero().flatten().tolist()
    return first, rest


def _add(index, corpus, doc_ids, which):
    index.add([doc_ids[i] for i in which], corpus.docs.select(which))


def test_drift_triggers_background_retrain_and_quality_matches_fresh_build(
    tmp_path, corpus, doc_ids, queries, truth, split
):
    first, rest = split
    index = build(
        corpus.docs.select(first),
        [doc_ids[i] for i in first],
        tmp_path / "idx",
        ncentroids=256,
        auto_retrain=True,
    )
    old_codec = index.snapshot.codec
    _add(index, corpus, doc_ids, rest)  # drift ~2x the training error: re-training starts
    index.wait_for_maintenance()
    assert index.last_retrain_error is None
    st = index.stats()
    assert index.snapshot.codec is not old_codec
    assert st["residual_drift"] < 1.3 and st["codec_trained_on"] == st["vectors"]
    assert sorted(index.ids()) == sorted(doc_ids)
    fresh = build(corpus.docs, doc_ids, ncentroids=256)
    got = recall(index.search(queries, k=10, method="plaid"), truth, 10)
    assert got >= recall(fresh.search(queries, k=10, method="plaid"), truth, 10) - 0.03
    index.close()
    reopened = MultiVectorIndex.open(tmp_path / "idx")
    assert len(list((tmp_path / "idx").glob("*.codec"))) == 1
    assert recall(reopened.search(queries, k=10, method="plaid"), truth, 10) == pytest.approx(got)


def test_without_retraining_drift_is_reported(corpus, doc_ids, split):
    first, rest = split
    index = build(corpus.docs.select(first), [doc_ids[i] for i in first], auto_retrain=False, ncentroids=256)
    _add(index, corpus, doc_ids, rest)
    assert index.stats()["residual_drift"] > 1.3
    assert not index.stats()["retraining"]


def test_changes_during_retraining_are_carried_over(corpus, doc_ids, queries, split):
    first, rest = split
    index = build(corpus.docs.select(first), [doc_ids[i] for i in first], auto_retrain=False, ncentroids=256)
    index.retrain(background=True)
    _add(index, corpus, doc_ids, rest[:50])  # added while re-training
    index.delete([doc_ids[first[0]], doc_ids[rest[0]]])
    index.add([doc_ids[first[1]]], corpus.docs.select([rest[60]]))  # replaced while re-training
    index.wait_for_maintenance()
    assert index.last_retrain_error is None
    expected = ({doc_ids[i] for i in first} | {doc_ids[i] for i in rest[:50]}) - {
        doc_ids[first[0]],
        doc_ids[rest[0]],
    }
    assert set(index.ids()) == expected and len(index) == len(expected)
    replaced = index.score(queries[0], [doc_ids[first[1]]])[0].score
    assert replaced == pytest.approx(index.score(queries[0], [doc_ids[first[1]]])[0].score)
    for row in index.search(queries, k=10, method="plaid"):
        ids = [h.id for h in row]
        assert len(ids) == len(set(ids)) and set(ids) <= expected


def test_growth_triggers_retraining_with_more_centroids(corpus, doc_ids):
    index = MultiVectorIndex.create(None, corpus.docs.dim, kmeans_niter=4)
    index.add(doc_ids[:10], corpus.docs.select(range(10)))
    small = index.snapshot.codec.ncentroids
    index.add(doc_ids[10:100], corpus.docs.select(range(10, 100)))
    index.wait_for_maintenance()
    assert index.snapshot.codec.ncentroids > small
    assert index.snapshot.codec.trained_on == index.stats()["vectors"]
