"""The collections/documents engine without gRPC: upserts, content hashes, deletes, reconciliation."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from service_helpers import batched, make_docs, reference_index

from tessera.client.errors import AlreadyExists, InvalidArgument, NotFound
from tessera.service.batcher import QueryBatcher
from tessera.service.engine import Engine, Observer

DOCS = make_docs(120)


class Counting(Observer):
    def __init__(self) -> None:
        self.documents = 0
        self.queries = 0

    def encoded(self, kind, count, seconds):
        if kind == "document":
            self.documents += count
        else:
            self.queries += count


@pytest.fixture
def engine(tmp_path, tiny_model_dir):
    obs = Counting()
    e = Engine(tmp_path / "data", observer=obs)
    e.create_collection("docs", str(tiny_model_dir))
    yield e
    e.close()


def test_search_equals_an_independent_in_process_index(engine, tiny_model_dir):
    # no background re-training, so that both sides hold the same codes whatever the timing
    engine.create_collection("fixed", str(tiny_model_dir), index_settings={"auto_retrain": False})
    for batch in batched(DOCS, 50):
        engine.upsert("fixed", batch)
    enc, ref = reference_index(tiny_model_dir, batched(DOCS, 50), auto_retrain=False)
    queries = [DOCS[3]["text"], "protein cancer therapy", "dog cat fish"]
    qv = enc.encode_queries(queries)
    for method in ("exact", "plaid", "xtr", "prf"):
        want = ref.search(qv, k=7, method=method)
        got = engine.batch_search("fixed", queries, k=7, method=method)
        for w, g in zip(want, got, strict=True):
            assert g.ids == [h.id for h in w], method
            assert [h.score for h in g.hits] == pytest.approx([h.score for h in w], abs=1e-5)
    # precomputed vectors: a [n, tokens, dim] tensor gives the same results as the texts
    by_vectors = engine.batch_search("fixed", qv, k=7, method="exact")
    assert [r.ids for r in by_vectors] == [[h.id for h in w] for w in ref.search(qv, k=7, method="exact")]
    # filters go through SQL; the reference filters in Python
    allowed = [d["id"] for d in DOCS if d["metadata"]["lang"] == "fr" and d["metadata"]["year"] >= 2010]
    want = ref.search(qv, k=5, method="exact", allowed_ids=allowed)
    got = engine.batch_search(
        "fixed", queries, k=5, method="exact", filter={"lang": "fr", "year": {"$gte": 2010}}
    )
    assert [g.ids for g in got] == [[h.id for h in w] for w in want]
    # two-stage: plaid candidates, exact MaxSim over them
    cands = ref.search(qv[:1], k=40, method="plaid")[0]
    want = ref.score(qv[0], [h.id for h in cands])[:5]
    got = engine.search("fixed", queries[0], k=5, method="two-stage", params={"candidates": 40})
    assert got.ids == [h.id for h in want]


def test_unchanged_text_is_not_re_encoded(engine):
    obs = engine.observer
    r = engine.upsert("docs", DOCS[:20])
    assert (r.inserted, r.updated, r.unchanged) == (20, 0, 0) and obs.documents == 20
    changed = [
        dict(DOCS[0], text=DOCS[0]["text"] + " dna"),
        dict(DOCS[1], metadata={"new": True}),
        *DOCS[2:5],
    ]
    r = engine.upsert("docs", changed)
    assert (r.inserted, r.updated, r.unchanged) == (0, 1, 4)
    assert obs.documents == 21  # only the changed text was encoded
    got = engine.get("docs", ["d1", "d0"])
    assert got.documents[0].metadata == {"new": True} and got.documents[1].text.endswith(" dna")
    assert engine.describe_collection("docs").documents == 20
    engine.check_consistency("docs")


def test_delete_get_and_counts(engine):
    engine.upsert("docs", DOCS[:30])
    assert engine.delete("docs", ids=["d0", "d1", "nope"]) == 2
    n_fr = sum(1 for d in DOCS[2:30] if d["metadata"]["lang"] == "fr")
    assert engine.delete("docs", filter={"lang": "fr"}) == n_fr
    assert engine.delete("docs", filter={"lang": "fr"}) == 0
    left = engine.get("docs", ["d2", "d0", "d4"])
    assert [d.id for d in left.documents] == ["d2"] and left.missing_ids == ["d0", "d4"]
    hits = engine.search("docs", "cell protein", k=100, method="exact")
    assert {"d0", "d1"}.isdisjoint(hits.ids) and len(hits) == 28 - n_fr
    info = engine.describe_collection("docs")
    assert info.documents == 28 - n_fr and info.pending_documents == 0 and info.vectors > 0
    assert sum(s.documents for s in info.segments) == info.documents
    engine.check_consistency("docs")


def test_product_quantised_collection(engine, tiny_model_dir):
    settings = {"quantizer": "pq", "auto_retrain": False}
    info = engine.create_collection("pq", str(tiny_model_dir), index_settings=settings)
    assert info.index_settings["quantizer"] == "pq"
    engine.upsert("pq", DOCS)
    assert engine._live["pq"].index.snapshot.codec.quantizer == "pq"
    assert len(engine.search("pq", DOCS[0]["text"], k=3, method="plaid")) == 3
    with pytest.raises(InvalidArgument, match="quantizer must be one of scalar, pq") as bad:
        engine.create_collection("bad", str(tiny_model_dir), index_settings={"quantizer": "opq"})
    assert bad.value.field == "settings.index"


def test_collections_create_list_drop(engine, tiny_model_dir):
    with pytest.raises(AlreadyExists):
        engine.create_collection("docs", str(tiny_model_dir))
    assert engine.create_collection("docs", str(tiny_model_dir), if_not_exists=True).name == "docs"
    engine.create_collection("other", str(tiny_model_dir), nbits=4, default_method="exact")
    assert [c.name for c in engine.list_collections()] == ["docs", "other"]
    engine.upsert("other", DOCS[:5])
    assert engine.drop_collection("other") is True
    assert engine.drop_collection("other", if_exists=True) is False
    with pytest.raises(NotFound):
        engine.search("other", "x")
    again = engine.create_collection("other", str(tiny_model_dir))
    assert again.documents == 0 and again.default_method == "plaid"
    with pytest.raises(InvalidArgument) as info:
        engine.create_collection("bad", str(tiny_model_dir / "missing"))
    assert info.value.field == "model"


def test_state_survives_reopen(tmp_path, tiny_model_dir):
    with Engine(tmp_path / "d") as e:
        e.create_collection("c", str(tiny_model_dir))
        e.upsert("c", DOCS[:40])
        e.delete("c", ids=["d3"])
        before = e.search("c", "gene expression", k=10, method="exact")
    with Engine(tmp_path / "d") as e:
        assert e.search("c", "gene expression", k=10, method="exact").hits == before.hits
        assert e.describe_collection("c").documents == 39
        e.check_consistency("c")


def test_reconcile_repairs_every_kind_of_disagreement(tmp_path, tiny_model_dir):
    """Crashes leave pending rows, index entries without rows, or no index at all; start-up fixes them."""
    data = tmp_path / "d"
    with Engine(data) as e:
        e.create_collection("c", str(tiny_model_dir))
        e.upsert("c", DOCS[:30])
        live = e._live["c"]
        # 1. rows committed as pending but never indexed (killed between store commit and index flush)
        e.store.stage_upsert(live.id, [(d["id"], d["text"], d["metadata"]) for d in DOCS[30:40]])
        # 2. a changed text committed but the index still holds the old vectors
        e.store.stage_upsert(live.id, [("d0", "completely new text about stars", {})])
        # 3. documents in the index that the store does not have (killed mid-delete)
        enc = live.slot.doc_encoder
        live.index.add(["ghost1", "ghost2"], enc.encode_documents(["ghost one", "ghost two"]))
        live.index.flush()
        with pytest.raises(Exception, match="differ|pending"):
            e.check_consistency("c")
    with Engine(data) as e:
        e.check_consistency("c")
        assert e.describe_collection("c").documents == 40
        top = e.search("c", "completely new text about stars", k=1, method="exact")
        assert top.ids == ["d0"]
        assert e.get("c", ["d35"]).documents[0].status == "indexed"
        folder = e._collection_dir(e._live["c"].record)
    # 4. the index folder lost entirely: rebuilt from the store
    shutil.rmtree(folder / "index")
    with Engine(data) as e:
        e.check_consistency("c")
        assert len(e.search("c", "cell", k=100, method="exact")) == 40


def test_validation_names_fields(engine):
    engine.upsert("docs", DOCS[:3])
    cases = [
        (lambda: engine.upsert("docs", [DOCS[0], DOCS[0]]), "documents[1].id"),
        (lambda: engine.upsert("docs", [{"id": "x", "text": "  "}]), "documents[0].text"),
        (
            lambda: engine.upsert("docs", [{"id": "x", "text": "t", "metadata": {"a": float("nan")}}]),
            "documents[0].metadata",
        ),
        (lambda: engine.upsert("docs", [{"id": "x", "text": "bad \ud800"}]), "documents[0].text"),
        (lambda: engine.search("docs", "x", k=0), "k"),
        (lambda: engine.search("docs", "x", method="fast"), "method"),
        (lambda: engine.search("docs", "x", fields=["body"]), "fields[0]"),
        (lambda: engine.search("docs", torch.zeros(3, 5)), "query"),
        (
            lambda: engine.search("docs", "x", method="two-stage", params={"first_stage": "two-stage"}),
            "params.first_stage",
        ),
        (lambda: engine.delete("docs"), "ids"),
        (lambda: engine.get("docs", ["a", "a"]), "ids[1]"),
        (lambda: engine.rerank("docs", "q", ids=["d0"], passages=["p"]), "ids"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.field == field, (field, info.value)
    with pytest.raises(NotFound):
        engine.rerank("docs", "q", ids=["d0", "missing"])


def test_rerank_ids_and_passages(engine):
    engine.upsert("docs", DOCS[:10])
    hits = engine.rerank("docs", DOCS[4]["text"], ids=["d1", "d4", "d7"], fields=["text"])
    assert hits[0].id == "d4" and hits[0].index == 1 and hits[0].text == DOCS[4]["text"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    ph = engine.rerank("docs", DOCS[4]["text"], passages=["dog", DOCS[4]["text"]], top_k=1)
    assert len(ph) == 1 and ph[0].index == 1 and ph[0].id is None


def test_batcher_merges_concurrent_requests():
    release = threading.Event()
    sizes = []

    def encode(texts):
        sizes.append(len(texts))
        release.wait(5)
        return torch.stack([torch.full((2, 4), float(len(t))) for t in texts])

    b = QueryBatcher(encode, max_batch=16)
    results = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, b.encode(["x" * i]))) for i in range(1, 9)
    ]
    for t in threads:
        t.start()
    while not sizes:  # the first request is being encoded; the others queue up behind it
        threading.Event().wait(0.005)
    threading.Event().wait(0.1)
    release.set()
    for t in threads:
        t.join()
    b.close()
    assert sum(sizes) == 8 and len(sizes) < 8 and max(sizes) > 1
    assert all(float(results[i][0, 0, 0]) == i for i in range(1, 9))


@pytest.mark.postgres
def test_engine_with_postgres_store(pg_url, tmp_path, tiny_model_dir):
    """The same engine with its metadata in PostgreSQL (`--db postgresql+psycopg://...`)."""
    with Engine(tmp_path / "d", pg_url) as e:
        e.create_collection("c", str(tiny_model_dir))
        assert e.upsert("c", DOCS[:30]).inserted == 30
        assert e.upsert("c", DOCS[:2]).unchanged == 2
        allowed = {
            d["id"] for d in DOCS[:30] if d["metadata"]["even"] and d["metadata"]["src"]["kind"] == "journal"
        }
        got = e.search("c", "cell", k=30, method="exact", filter={"even": True, "src.kind": "journal"})
        assert set(got.ids) == allowed
        assert e.delete("c", filter={"year": {"$gte": 2020}}) == sum(
            d["metadata"]["year"] >= 2020 for d in DOCS[:30]
        )
        live = e._live["c"]
        e.store.stage_upsert(
            live.id, [(d["id"], d["text"], d["metadata"]) for d in DOCS[30:35]]
        )  # a crash's leftovers
    assert not (tmp_path / "d" / "tessera.db").exists()  # nothing went to SQLite
    with Engine(tmp_path / "d", pg_url) as e:
        e.check_consistency("c")
        assert e.get("c", ["d31"]).documents[0].status == "indexed"
