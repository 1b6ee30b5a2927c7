"""Searches run on immutable snapshots while several writers update, merge and flush."""

from __future__ import annotations

import threading

from index_helpers import build


def test_concurrent_search_and_updates(tmp_path, corpus, doc_ids, queries):
    docs = corpus.docs
    # re-training may start in the background as well: it must not disturb anything either
    index = build(docs.select(range(150)), doc_ids[:150], tmp_path / "idx", max_segments=3, auto_retrain=True)
    index.flush()
    errors: list[BaseException] = []
    stop = threading.Event()
    deleted_for_good = set(doc_ids[:20])
    results = {"searches": 0}

    def searcher(method: str) -> None:
        try:
            while not stop.is_set():
                for row in index.search(queries[:4], k=10, method=method):
                    ids = [h.id for h in row]
                    assert len(ids) == len(set(ids)), "a document appeared twice (torn upsert)"
                    assert len(ids) == 10
                    results["searches"] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def adder() -> None:
        try:
            for start in range(150, 400, 25):
                index.add(doc_ids[start : start + 25], docs.select(range(start, start + 25)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def upserter_deleter() -> None:
        try:
            for i in range(20, 60):
                index.add([doc_ids[i]], docs.select([(i * 7) % 400]))  # replace
            index.delete(sorted(deleted_for_good))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def maintainer() -> None:
        try:
            for _ in range(3):
                index.merge()
                index.flush()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    readers = [threading.Thread(target=searcher, args=(m,)) for m in ("plaid", "exact", "plaid")]
    writers = [threading.Thread(target=f) for f in (adder, upserter_deleter, maintainer)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert results["searches"] > 0
    assert len(index) == 400 - len(deleted_for_good)
    assert not deleted_for_good & set(index.ids())
    for row in index.search(queries, k=20, method="plaid"):
        assert not deleted_for_good & {h.id for h in row}
    index.wait_for_maintenance()
    assert index.last_retrain_error is None
    index.flush()
    from tessera.index import MultiVectorIndex

    reopened = MultiVectorIndex.open(tmp_path / "idx")
    assert sorted(reopened.ids()) == sorted(index.ids())
