"""The SQL metadata store on SQLite and PostgreSQL: schema, upsert staging, filters, counts."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from tessera.client.errors import InvalidArgument
from tessera.client.filters import And, Eq, In, Or, Range, parse_filter
from tessera.service.store import DuplicateCollection, SegmentRecord, Store, StoreError, content_hash, migrate

DOCS = [
    ("a", "alpha text", {"year": 2001, "lang": "en", "tags": "x", "ok": True, "src": {"venue": "ACL"}}),
    ("b", "beta text", {"year": 2005, "lang": "fr", "tags": "2005", "ok": False, "src": {"venue": "EMNLP"}}),
    ("c", "gamma text", {"year": 2010.5, "lang": "en", "ok": True}),
    ("d", "delta text", {"year": "2005", "lang": "de"}),
    ("e", "epsilon text", {}),
]


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


def _fill(store):
    rec = store.create_collection("docs", "model-x", 32, {"nbits": 2})
    plan = store.stage_upsert(rec.id, DOCS)
    store.mark_indexed(rec.id, [(i, h) for i, _, h in plan.to_encode])
    return rec


@pytest.fixture
def coll(store):
    return _fill(store)


@pytest.fixture(scope="module")
def shared(module_db_url):
    """A read-only store with DOCS, for the filter table."""
    s = Store(module_db_url)
    yield s, _fill(s)
    s.close()


def test_migrations_reach_head_and_match_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tessera.service.store.models import Base

    assert store.schema_revision() == migrate.head_revision()
    names = set(inspect(store.engine).get_table_names())
    assert {"collections", "documents", "index_segments", migrate.VERSION_TABLE} <= names
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == migrate.VERSION_TABLE)] == []


def test_reopen_is_idempotent(db_url):
    Store(db_url).close()
    s = Store(db_url)
    assert s.schema_revision() == migrate.head_revision()
    s.close()


def test_sqlite_is_in_wal_mode(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'x.db'}")
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    s.close()
    assert (tmp_path / "x.db").exists()


def test_bad_urls_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="unsupported database"):
        Store("mysql://x/y")
    with pytest.raises(StoreError, match="invalid database URL"):
        Store("not a url")
    with pytest.raises(StoreError, match="cannot open"):
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_collections_lifecycle(store):
    rec = store.create_collection("c1", "m", 16, {"nbits": 4})
    assert rec.status == "creating" and rec.settings == {"nbits": 4} and rec.created_at.tzinfo is not None
    with pytest.raises(DuplicateCollection):
        store.create_collection("c1", "m", 16, {})
    store.set_collection_status(rec.id, "ready")
    store.create_collection("a0", "m", 16, {})
    assert [c.name for c in store.list_collections()] == ["a0", "c1"]
    assert store.get_collection("c1").status == "ready"
    plan = store.stage_upsert(rec.id, DOCS[:2])
    store.replace_segments(rec.id, [SegmentRecord("seg-000001", 2, 10, 3)])
    store.delete_collection(rec.id)
    assert store.get_collection("c1") is None
    assert store.document_counts(rec.id) == {} and store.segments(rec.id) == []
    assert plan.inserted == 2


def test_stage_upsert_classifies_by_content_hash(store, coll):
    assert store.document_counts(coll.id) == {"indexed": 5}
    plan = store.stage_upsert(
        coll.id,
        [
            ("a", "alpha text", {"year": 1999}),  # same text: metadata only
            ("b", "beta text CHANGED", {}),  # changed: re-encode
            ("f", "new text", {"n": 1}),  # new
        ],
    )
    assert (plan.inserted, plan.updated, plan.unchanged) == (1, 1, 1)
    assert [x[0] for x in plan.to_encode] == ["b", "f"]
    assert plan.to_encode[0][2] == content_hash("beta text CHANGED")
    got = store.get_documents(coll.id, ["a", "b", "f"])
    assert got["a"].metadata == {"year": 1999} and got["a"].status == "indexed"
    assert got["b"].status == "pending" and got["b"].text == "beta text CHANGED"
    assert store.document_counts(coll.id) == {"indexed": 4, "pending": 2}
    # a confirmation for an outdated hash does not mark the newer text as indexed
    assert store.mark_indexed(coll.id, [("b", content_hash("beta text"))]) == 0
    assert (
        store.mark_indexed(coll.id, [("b", content_hash("beta text CHANGED")), ("f", plan.to_encode[1][2])])
        == 2
    )
    assert store.document_counts(coll.id) == {"indexed": 6}
    # a pending row with the same text is encoded again (it never reached the index for sure)
    store.stage_upsert(coll.id, [("a", "alpha text v2", {})])
    again = store.stage_upsert(coll.id, [("a", "alpha text v2", {})])
    assert again.updated == 1 and again.unchanged == 0


def test_get_delete_and_ids(store, coll):
    got = store.get_documents(coll.id, ["c", "zz", "a"], text=False)
    assert set(got) == {"a", "c"} and got["a"].text is None and got["a"].metadata["src"] == {"venue": "ACL"}
    assert store.existing_ids(coll.id, ["a", "q", "e"]) == {"a", "e"}
    assert store.delete_documents(coll.id, ["a", "q"]) == 1
    assert store.id_status(coll.id) == {k: "indexed" for k in "bcde"}
    assert store.texts(coll.id, ["b"]) == {"b": ("beta text", content_hash("beta text"))}


def test_many_ids_are_chunked(store):
    rec = store.create_collection("big", "m", 8, {})
    docs = [(f"id-{i}", f"t{i}", {"i": i}) for i in range(1234)]
    plan = store.stage_upsert(rec.id, docs)
    assert plan.inserted == 1234
    assert len(store.get_documents(rec.id, [d[0] for d in docs])) == 1234
    assert len(store.filter_ids(rec.id, Range("i", gte=1000))) == 234


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"lang": "en"}, "ac"),
        ({"year": 2005}, "b"),  # the string "2005" in d does not equal the number
        ({"year": "2005"}, "d"),
        ({"year": 2010.5}, "c"),
        ({"tags": "2005"}, "b"),
        ({"ok": True}, "ac"),
        ({"ok": False}, "b"),
        ({"lang": {"$in": ["fr", "de"]}}, "bd"),
        ({"year": {"$in": [2001, "2005"]}}, "ad"),
        ({"year": {"$gte": 2005}}, "bc"),  # strings are not numbers
        ({"year": {"$gt": 2001, "$lte": 2010.5}}, "bc"),
        ({"year": {"$lt": 2005}}, "a"),
        ({"src.venue": "ACL"}, "a"),
        ({"src.venue": {"$in": ["ACL", "EMNLP"]}, "lang": "fr"}, "b"),
        ({"$or": [{"lang": "de"}, {"year": {"$gt": 2009}}]}, "cd"),
        ({"$and": [{"lang": "en"}, {"$or": [{"ok": False}, {"year": 2001}]}]}, "a"),
        ({"missing": 1}, ""),
        ({"lang": {"$eq": "en"}, "year": {"$lt": 2002}}, "a"),
    ],
)
def test_filters(shared, spec, expected):
    store, coll = shared
    assert "".join(sorted(store.filter_ids(coll.id, parse_filter(spec)))) == expected


def test_filter_trees_and_dicts_agree(shared):
    store, coll = shared
    tree = Or((And((Eq("lang", "en"), Range("year", gte=2002))), In("lang", ("de",))))
    assert sorted(store.filter_ids(coll.id, tree)) == ["c", "d"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "filter"),
        ({"$nor": []}, "filter"),
        ({"$and": []}, "filter.$and"),
        ({"year": {"$between": 1}}, "filter.year"),
        ({"year": {"$in": []}}, "filter.in_values.values"),
        ({"year": {"$gt": "x"}}, "filter.range.gt"),
        ({"year": [1, 2]}, "filter.eq.value"),
        ({"bad field!": 1}, "filter.eq.field"),
        ({"year": float("nan")}, "filter.eq.value"),
    ],
)
def test_malformed_filters_name_the_field(spec, field):
    with pytest.raises(InvalidArgument) as info:
        parse_filter(spec)
    assert info.value.field == field
