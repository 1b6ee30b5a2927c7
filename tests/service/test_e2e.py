"""End to end over a real localhost port: the SDK against `tessera serve`'s server, compared with an
index built in-process from the same data."""

from __future__ import annotations

import urllib.request

import pytest
from service_helpers import batched, make_docs, reference_index, start_server

from tessera.client import Client, InvalidArgument, NotFound
from tessera.client.types import CollectionInfo, SearchHit, SearchResult, StoredDocument

DOCS = make_docs(150)
QUERIES = [DOCS[7]["text"], "protein expression in cancer cells", "dog cat bird fish", "blood pressure risk"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("e2e"), metrics_port=0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = Client(f"127.0.0.1:{server.port}", timeout=30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def loaded(client, tiny_model_dir):
    """A collection filled through the streaming bulk upsert, and the in-process reference index."""
    info = client.create_collection("sci", str(tiny_model_dir), index_settings={"auto_retrain": False})
    assert isinstance(info, CollectionInfo) and info.dim == 16 and info.documents == 0
    result = client.bulk_upsert("sci", DOCS, batch_size=50, progress=False)
    assert (result.inserted, result.updated, result.unchanged) == (150, 0, 0)
    enc, ref = reference_index(tiny_model_dir, batched(DOCS, 50), auto_retrain=False)
    return enc, ref


@pytest.mark.parametrize("method", ["exact", "plaid", "xtr", "prf"])
def test_search_equals_in_process_index(client, loaded, method):
    enc, ref = loaded
    want = ref.search(enc.encode_queries(QUERIES), k=10, method=method)
    for query, w in zip(QUERIES, want, strict=True):
        got = client.search("sci", query, k=10, method=method)
        assert isinstance(got, SearchResult) and all(type(h) is SearchHit for h in got)
        assert got.ids == [h.id for h in w]
        assert [h.score for h in got] == pytest.approx([h.score for h in w], abs=1e-5)
    batch = client.batch_search("sci", QUERIES, k=10, method=method)
    assert [r.ids for r in batch] == [[h.id for h in w] for w in want]


@pytest.mark.parametrize("bf16", [False, True])
def test_a_boolean_method_parameter_reaches_the_index(client, loaded, bf16):
    """plaid's ``bf16`` over the wire: the same hits as the in-process index with the same parameter."""
    enc, ref = loaded
    want = ref.search(enc.encode_queries(QUERIES), k=10, method="plaid", params={"bf16": bf16})
    for query, w in zip(QUERIES, want, strict=True):
        got = client.search("sci", query, k=10, method="plaid", params={"bf16": bf16})
        assert got.ids == [h.id for h in w]
        assert [h.score for h in got] == pytest.approx([h.score for h in w], abs=1e-5)
    with pytest.raises(InvalidArgument, match="bf16"):  # it arrives typed: an int is not a bool
        client.search("sci", QUERIES[0], k=10, method="plaid", params={"bf16": int(bf16)})


def test_precomputed_query_vectors_and_two_stage(client, loaded):
    enc, ref = loaded
    qv = enc.encode_queries(QUERIES[:1])
    by_vectors = client.search("sci", qv[0].numpy(), k=5, method="exact")
    assert by_vectors.ids == [h.id for h in ref.search(qv, k=5, method="exact")[0]]
    by_text = client.batch_search("sci", QUERIES[:1], k=5, method="exact")
    assert [r.ids for r in client.batch_search("sci", qv.numpy(), k=5, method="exact")] == [by_text[0].ids]
    cands = ref.search(qv, k=50, method="plaid")[0]
    want = ref.score(qv[0], [h.id for h in cands])[:5]
    got = client.search(
        "sci", QUERIES[0], k=5, method="two-stage", params={"candidates": 50, "first_stage": "plaid"}
    )
    assert got.ids == [h.id for h in want]


@pytest.mark.parametrize(
    ("spec", "predicate"),
    [
        ({"lang": "fr"}, lambda m: m["lang"] == "fr"),
        ({"year": {"$gte": 2010, "$lt": 2020}}, lambda m: 2010 <= m["year"] < 2020),
        ({"lang": {"$in": ["en", "de"]}, "even": True}, lambda m: m["lang"] in ("en", "de") and m["even"]),
        (
            {"$or": [{"src.kind": "preprint"}, {"score": {"$gt": 0.9}}]},
            lambda m: m["src"]["kind"] == "preprint" or m["score"] > 0.9,
        ),
    ],
)
def test_filtered_search_equals_in_process_index(client, loaded, spec, predicate):
    enc, ref = loaded
    allowed = [d["id"] for d in DOCS if predicate(d["metadata"])]
    for method in ("exact", "plaid"):
        want = ref.search(enc.encode_queries(QUERIES[1:2]), k=8, method=method, allowed_ids=allowed)[0]
        got = client.search("sci", QUERIES[1], k=8, method=method, filter=spec, fields=["metadata"])
        assert got.ids == [h.id for h in want]
        assert all(predicate(h.metadata) for h in got)


def test_rerank_ids_and_passages(client, loaded):
    enc, ref = loaded
    qv = enc.encode_queries(QUERIES[:1])[0]
    ids = ["d7", "d1", "d99", "d42"]
    want = ref.score(qv, ids)
    got = client.rerank("sci", QUERIES[0], ids=ids, fields=["text"])
    assert [h.id for h in got] == [h.id for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    assert got[0].text == DOCS[7]["text"] and got[0].index == 0
    passages = ["dog cat", DOCS[7]["text"], "blood"]
    got = client.rerank("sci", QUERIES[0], passages=passages, top_k=2)
    assert len(got) == 2 and got[0].index == 1 and got[0].id is None


def test_get_fields_and_describe(client, loaded):
    got = client.get("sci", ["d3", "nope", "d4"])
    assert [d.id for d in got] == ["d3", "d4"] and got.missing_ids == ["nope"]
    doc = got.documents[0]
    assert (
        isinstance(doc, StoredDocument)
        and doc.text == DOCS[3]["text"]
        and doc.metadata == DOCS[3]["metadata"]
    )
    assert doc.status == "indexed" and len(doc.content_hash) == 64 and doc.created_at is not None
    hit = client.search("sci", QUERIES[0], k=1, fields=["text", "metadata"])[0]
    assert hit.text == DOCS[7]["text"] and hit.metadata == DOCS[7]["metadata"]
    bare = client.search("sci", QUERIES[0], k=1)[0]
    assert bare.text is None and bare.metadata is None
    info = client.describe_collection("sci")
    assert info.documents == 150 and info.pending_documents == 0 and info.vectors > 150
    assert info.index_settings == {"auto_retrain": False} and info.segments
    assert [c.name for c in client.list_collections()] == ["sci"]
    stats = client.stats()
    assert stats.collections[0].documents == 150 and "plaid" in stats.methods


def test_upsert_delete_drop_cycle(client, tiny_model_dir):
    client.create_collection("tmp", str(tiny_model_dir))
    docs = make_docs(30, seed=5, prefix="t")
    assert client.upsert("tmp", docs).inserted == 30
    again = client.upsert("tmp", [dict(docs[0], metadata={"x": 1}), dict(docs[1], text="new text dog")])
    assert (again.unchanged, again.updated) == (1, 1)
    assert client.get("tmp", ["t0"]).documents[0].metadata == {"x": 1}
    assert client.delete("tmp", ["t2", "t3", "zz"]) == 2
    remaining = [docs[1], *docs[4:]]  # t0's metadata was replaced; t2, t3 are gone
    fr = {d["id"] for d in remaining if d["metadata"]["lang"] == "fr"}
    assert client.delete("tmp", filter={"lang": "fr"}) == len(fr)
    left = client.search("tmp", "dog", k=100, method="exact")
    assert len(left) == 28 - len(fr) and not ({"t2", "t3"} | fr) & set(left.ids)
    assert client.drop_collection("tmp") is True
    with pytest.raises(NotFound):
        client.describe_collection("tmp")


def test_metrics_endpoint(server, client, loaded):
    client.search("sci", "cell", k=3)
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    assert 'tessera_requests_total{code="OK",method="Search"}' in text
    assert "tessera_request_duration_seconds_bucket" in text
    assert "tessera_requests_in_flight" in text
    assert 'tessera_collection_documents{collection="sci"} 150.0' in text
    assert 'tessera_collection_vectors{collection="sci"}' in text
    assert 'tessera_encode_duration_seconds_count{kind="query"}' in text
    assert 'tessera_search_duration_seconds_count{method="plaid"}' in text
