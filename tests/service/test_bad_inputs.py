"""Every bad input tried against the real server (raw protobuf stubs, no SDK checks in between),
with the status code it must get and the request field the message must name.

    pytest tests/service/test_bad_inputs.py -v     # prints the table
    TESSERA_UPDATE_DOCS=1 pytest tests/service/test_bad_inputs.py    # rewrites docs/errors.md

docs/errors.md holds the table with the message each case got; a test fails when it misses a case.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, message_factory
from service_helpers import make_docs, start_server

from tessera.proto.tessera.v1 import tessera_pb2 as pb
from tessera.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from tessera.service.limits import Limits
from tessera.service.utf8 import _shadow

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
LIMITS = Limits(max_k=100, max_batch_documents=20, max_batch_queries=4, max_ids=50, max_rerank_candidates=10)
MAX_MESSAGE = 256 * 1024
ERRORS_DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
GOT: dict[str, tuple[str, str, str]] = {}  # case -> (rpc, status, message), filled as the cases run


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    srv = start_server(tmp_path_factory.mktemp("bad"), limits=LIMITS, max_message_bytes=MAX_MESSAGE)
    from tessera.client import Client

    with Client(f"127.0.0.1:{srv.port}") as c:
        c.create_collection("c", str(tiny_model_dir))
        c.upsert("c", make_docs(10))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield ch
    ch.close()


def search(text="q", **opts):
    req = pb.SearchRequest(collection="c", options=pb.SearchOptions(**opts))
    if text is not None:
        req.query.text = text
    return req


def vectors(tokens, dim, values):
    req = pb.SearchRequest(collection="c")
    req.query.vectors.tokens, req.query.vectors.dim = tokens, dim
    req.query.vectors.values.extend(values)
    return req


def flt(**kind):
    return search(filter=pb.Filter(**kind))


def docs(*pairs):
    return pb.UpsertRequest(collection="c", documents=[pb.Document(id=i, text=t) for i, t in pairs])


def param(**values):
    req = search()
    for name, value in values.items():
        pv = req.options.params[name]
        if value is None:
            continue
        setattr(pv, {int: "int_value", float: "float_value", str: "string_value"}[type(value)], value)
    return req


CASES = [
    # (case id, rpc, request, expected code, field named in the message)
    ("search: empty query text", "Search", search(""), INVALID, "query"),
    ("search: blank query text", "Search", search("   "), INVALID, "query"),
    ("search: no query", "Search", search(None), INVALID, "query"),
    ("search: k = 0", "Search", search(k=0), INVALID, "options.k"),
    ("search: k < 0", "Search", search(k=-3), INVALID, "options.k"),
    ("search: k too large", "Search", search(k=101), INVALID, "options.k"),
    ("search: unknown method", "Search", search(method="bm25"), INVALID, "options.method"),
    ("search: unknown method parameter", "Search", param(nprobe_x=3), INVALID, "options.params"),
    ("search: parameter of the wrong type", "Search", param(ncells="many"), INVALID, "options.params"),
    ("search: negative parameter", "Search", param(ncells=-1), INVALID, "options.params"),
    ("search: parameter without a value", "Search", param(ncells=None), INVALID, "options.params.ncells"),
    ("search: unknown field to return", "Search", search(fields=["body"]), INVALID, "options.fields[0]"),
    ("search: empty filter", "Search", flt(), INVALID, "options.filter"),
    (
        "search: filter eq without value",
        "Search",
        flt(eq=pb.FieldEquals(field="lang")),
        INVALID,
        "options.filter.eq.value",
    ),
    (
        "search: filter with bad field name",
        "Search",
        flt(eq=pb.FieldEquals(field="a b", value=pb.Scalar(number_value=1))),
        INVALID,
        "options.filter.eq.field",
    ),
    (
        "search: filter range without bounds",
        "Search",
        flt(range=pb.FieldRange(field="year")),
        INVALID,
        "options.filter.range",
    ),
    (
        "search: filter in with no values",
        "Search",
        flt(in_values=pb.FieldIn(field="lang")),
        INVALID,
        "options.filter.in_values.values",
    ),
    (
        "search: filter and of nothing",
        "Search",
        flt(all_of=pb.FilterList()),
        INVALID,
        "options.filter.all_of",
    ),
    (
        "search: nested filter malformed",
        "Search",
        flt(
            any_of=pb.FilterList(
                filters=[
                    pb.Filter(eq=pb.FieldEquals(field="a", value=pb.Scalar(string_value="x"))),
                    pb.Filter(),
                ]
            )
        ),
        INVALID,
        "options.filter.any_of[1]",
    ),
    ("search: vectors of the wrong dimension", "Search", vectors(2, 3, [0.1] * 6), INVALID, "query"),
    ("search: vectors count mismatch", "Search", vectors(2, 16, [0.1] * 5), INVALID, "query.vectors.values"),
    (
        "search: NaN in vectors",
        "Search",
        vectors(1, 16, [float("nan")] * 16),
        INVALID,
        "query.vectors.values",
    ),
    (
        "search: no collection named",
        "Search",
        pb.SearchRequest(query=pb.Query(text="q")),
        INVALID,
        "collection",
    ),
    (
        "search: unknown collection",
        "Search",
        pb.SearchRequest(collection="nope", query=pb.Query(text="q")),
        NOT_FOUND,
        "collection",
    ),
    ("batch search: no queries", "BatchSearch", pb.BatchSearchRequest(collection="c"), INVALID, "queries"),
    (
        "batch search: too many queries",
        "BatchSearch",
        pb.BatchSearchRequest(collection="c", queries=[pb.Query(text="q")] * 5),
        INVALID,
        "queries",
    ),
    (
        "batch search: one empty query",
        "BatchSearch",
        pb.BatchSearchRequest(collection="c", queries=[pb.Query(text="q"), pb.Query(text="")]),
        INVALID,
        "queries[1]",
    ),
    (
        "batch search: one unset query",
        "BatchSearch",
        pb.BatchSearchRequest(collection="c", queries=[pb.Query(text="q"), pb.Query()]),
        INVALID,
        "queries[1]",
    ),
    ("upsert: batch too large", "Upsert", docs(*[(f"x{i}", "t") for i in range(21)]), INVALID, "documents"),
    (
        "upsert: duplicate ids in one batch",
        "Upsert",
        docs(("a", "t"), ("b", "t"), ("a", "u")),
        INVALID,
        "documents[2].id",
    ),
    ("upsert: empty id", "Upsert", docs(("", "t")), INVALID, "documents[0].id"),
    ("upsert: id too long", "Upsert", docs(("x" * 600, "t")), INVALID, "documents[0].id"),
    ("upsert: empty text", "Upsert", docs(("a", "")), INVALID, "documents[0].text"),
    (
        "upsert: unknown collection",
        "Upsert",
        pb.UpsertRequest(collection="nope", documents=[pb.Document(id="a", text="t")]),
        NOT_FOUND,
        "collection",
    ),
    ("delete: neither ids nor filter", "Delete", pb.DeleteRequest(collection="c"), INVALID, "ids"),
    (
        "delete: ids and a filter",
        "Delete",
        pb.DeleteRequest(
            collection="c",
            ids=["a"],
            filter=pb.Filter(eq=pb.FieldEquals(field="a", value=pb.Scalar(bool_value=True))),
        ),
        INVALID,
        "ids",
    ),
    (
        "delete: duplicate ids",
        "Delete",
        pb.DeleteRequest(collection="c", ids=["a", "b", "a"]),
        INVALID,
        "ids[2]",
    ),
    (
        "delete: malformed filter",
        "Delete",
        pb.DeleteRequest(collection="c", filter=pb.Filter(range=pb.FieldRange(field="year"))),
        INVALID,
        "filter.range",
    ),
    ("get: no ids", "Get", pb.GetRequest(collection="c"), INVALID, "ids"),
    (
        "get: too many ids",
        "Get",
        pb.GetRequest(collection="c", ids=[f"x{i}" for i in range(51)]),
        INVALID,
        "ids",
    ),
    ("get: duplicate ids", "Get", pb.GetRequest(collection="c", ids=["d1", "d1"]), INVALID, "ids[1]"),
    ("get: empty id", "Get", pb.GetRequest(collection="c", ids=["d1", ""]), INVALID, "ids[1]"),
    (
        "rerank: no candidates",
        "Rerank",
        pb.RerankRequest(collection="c", query=pb.Query(text="q")),
        INVALID,
        "ids",
    ),
    (
        "rerank: ids and passages",
        "Rerank",
        pb.RerankRequest(collection="c", query=pb.Query(text="q"), ids=["d1"], passages=["p"]),
        INVALID,
        "ids",
    ),
    (
        "rerank: too many candidates",
        "Rerank",
        pb.RerankRequest(collection="c", query=pb.Query(text="q"), passages=["p"] * 11),
        INVALID,
        "passages",
    ),
    (
        "rerank: unknown candidate id",
        "Rerank",
        pb.RerankRequest(collection="c", query=pb.Query(text="q"), ids=["d1", "nope"]),
        NOT_FOUND,
        "ids",
    ),
    (
        "rerank: empty passage",
        "Rerank",
        pb.RerankRequest(collection="c", query=pb.Query(text="q"), passages=["p", " "]),
        INVALID,
        "passages[1]",
    ),
    ("rerank: no query", "Rerank", pb.RerankRequest(collection="c", ids=["d1"]), INVALID, "query"),
    (
        "rerank: negative top_k",
        "Rerank",
        pb.RerankRequest(collection="c", query=pb.Query(text="q"), ids=["d1"], top_k=-1),
        INVALID,
        "top_k",
    ),
    (
        "create: invalid name",
        "CreateCollection",
        pb.CreateCollectionRequest(name="bad name!", model="m"),
        INVALID,
        "name",
    ),
    ("create: no model", "CreateCollection", pb.CreateCollectionRequest(name="x"), INVALID, "model"),
    (
        "create: unknown model",
        "CreateCollection",
        pb.CreateCollectionRequest(name="x", model="/no/such/model"),
        INVALID,
        "model",
    ),
    (
        "create: nbits 3",
        "CreateCollection",
        pb.CreateCollectionRequest(name="x", model="m", settings=pb.CollectionSettings(nbits=3)),
        INVALID,
        "settings.nbits",
    ),
    (
        "create: unknown default method",
        "CreateCollection",
        pb.CreateCollectionRequest(
            name="x", model="m", settings=pb.CollectionSettings(default_method="fast")
        ),
        INVALID,
        "settings.default_method",
    ),
    ("create: existing name", "CreateCollection", "EXISTING", grpc.StatusCode.ALREADY_EXISTS, "name"),
    ("create: unknown index setting", "CreateCollection", "BAD_SETTING", INVALID, "settings.index"),
    ("create: unknown residual quantizer", "CreateCollection", "BAD_QUANTIZER", INVALID, "settings.index"),
    ("create: index setting of the wrong type", "CreateCollection", "BAD_SETTING_VALUE", INVALID, "settings.index"),
    (
        "describe: unknown collection",
        "DescribeCollection",
        pb.DescribeCollectionRequest(name="nope"),
        NOT_FOUND,
        "name",
    ),
    ("drop: unknown collection", "DropCollection", pb.DropCollectionRequest(name="nope"), NOT_FOUND, "name"),
    ("stats: unknown collection", "Stats", pb.StatsRequest(collection="nope"), NOT_FOUND, "collection"),
]


def _special(request, tiny_model_dir):
    if request == "EXISTING":
        return pb.CreateCollectionRequest(name="c", model=str(tiny_model_dir))
    if request == "BAD_SETTING":
        req = pb.CreateCollectionRequest(name="x2", model=str(tiny_model_dir))
        req.settings.index["colour"].string_value = "red"
        return req
    if request == "BAD_SETTING_VALUE":
        req = pb.CreateCollectionRequest(name="x4", model=str(tiny_model_dir))
        req.settings.index["max_segments"].string_value = "eight"
        return req
    if request == "BAD_QUANTIZER":
        req = pb.CreateCollectionRequest(name="x3", model=str(tiny_model_dir))
        req.settings.index["quantizer"].string_value = "opq"
        return req
    return request


@pytest.mark.parametrize(("case", "rpc", "request_", "code", "field"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(channel, tiny_model_dir, case, rpc, request_, code, field):
    stub = pb_grpc.TesseraStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(_special(request_, tiny_model_dir), timeout=30)
    err = info.value
    assert err.code() == code, f"{case}: {err.code()} {err.details()}"
    assert err.details().startswith(f"{field}:"), f"{case}: {err.details()!r} does not name {field!r}"
    assert "Traceback" not in err.details()
    GOT[case] = (rpc, err.code().name, err.details())


def _raw(channel, rpc: str, payload: bytes):
    call = channel.unary_unary(
        f"/tessera.v1.Tessera/{rpc}", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        call(payload, timeout=30)
    return info.value


def _shadow_message(name: str):
    pool, _, _ = _shadow()
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


@pytest.mark.parametrize(
    ("case", "rpc", "build", "field"),
    [
        (
            "invalid UTF-8 in the query",
            "Search",
            lambda m: (setattr(m, "collection", b"c"), setattr(m.query, "text", b"caf\xe9")),
            "query.text",
        ),
        (
            "invalid UTF-8 in a document text",
            "Upsert",
            lambda m: (
                setattr(m, "collection", b"c"),
                m.documents.add(id=b"a", text=b"ok"),
                m.documents.add(id=b"b", text=b"\xff\xfe"),
            ),
            "documents[1].text",
        ),
        (
            "invalid UTF-8 in an id",
            "Get",
            lambda m: (setattr(m, "collection", b"c"), m.ids.extend([b"\xc3("])),
            "ids[0]",
        ),
        (
            "invalid UTF-8 in a metadata value",
            "Upsert",
            lambda m: (
                setattr(m, "collection", b"c"),
                setattr(
                    m.documents.add(id=b"a", text=b"t").metadata.fields.add(key=b"k").value,
                    "string_value",
                    b"\x80",
                ),
            ),
            'documents[0].metadata.fields["k"]',
        ),
    ],
)
def test_invalid_utf8_names_the_field(channel, case, rpc, build, field):
    request_type = {"Search": "SearchRequest", "Upsert": "UpsertRequest", "Get": "GetRequest"}[rpc]
    msg = _shadow_message(f"tessera.v1.{request_type}")()
    build(msg)
    err = _raw(channel, rpc, msg.SerializeToString())
    assert err.code() == INVALID, err.details()
    assert err.details().startswith(field) and "UTF-8" in err.details(), err.details()
    GOT[case] = (rpc, err.code().name, err.details())


def test_unparseable_request_bytes(channel):
    err = _raw(channel, "Search", b"\xff\xff\xff\xff")
    assert err.code() == INVALID and "could not be parsed" in err.details()
    GOT["unparseable request bytes"] = ("Search", err.code().name, err.details())


def test_oversized_message_is_refused(channel):
    req = docs(("big", "x" * (MAX_MESSAGE + 1000)))
    stub = pb_grpc.TesseraStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Upsert(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    GOT["message over --max-message-mb"] = ("Upsert", info.value.code().name, info.value.details())


def test_bulk_upsert_stream_errors_name_the_message(channel):
    stub = pb_grpc.TesseraStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.BulkUpsert(iter([docs(("s1", "t")), docs(("s2", "t"), ("s2", "u"))]), timeout=30)
    assert info.value.code() == INVALID and info.value.details().startswith("message[1].documents[1].id")
    other = pb.UpsertRequest(collection="other", documents=[pb.Document(id="z", text="t")])
    with pytest.raises(grpc.RpcError) as info:
        stub.BulkUpsert(iter([docs(("s3", "t")), other]), timeout=30)
    assert info.value.code() == INVALID and info.value.details().startswith("message[1].collection")


def test_descriptor_pool_is_not_polluted():
    """The shadow message types live in their own pool: the real ones still reject bad UTF-8."""
    assert descriptor_pb2 is not None
    with pytest.raises(Exception):  # noqa: B017 - DecodeError from the real parser
        pb.SearchRequest.FromString(
            _shadow_message("tessera.v1.SearchRequest")(collection=b"\xff").SerializeToString()
        )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def test_errors_doc_lists_every_case():
    """docs/errors.md has a row per case with the status it gets (TESSERA_UPDATE_DOCS=1 rewrites it from
    this run's replies; run the whole module then)."""
    expected = {c[0]: c[3].name for c in CASES}
    if os.environ.get("TESSERA_UPDATE_DOCS"):
        rows = [
            f"| {_cell(case)} | {rpc} | {code} | `{_cell(msg)}` |" for case, (rpc, code, msg) in GOT.items()
        ]
        head = ERRORS_DOC.read_text().split("<!-- table -->")[0] if ERRORS_DOC.exists() else "# Errors\n\n"
        ERRORS_DOC.write_text(
            head + "<!-- table -->\n| bad input | RPC | status | message the client got |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n"
        )
    text = ERRORS_DOC.read_text()
    for case, code in expected.items():
        assert f"| {_cell(case)} |" in text and code in text, f"docs/errors.md lacks {case!r} ({code})"
        row = next(line for line in text.splitlines() if line.startswith(f"| {_cell(case)} |"))
        assert f"| {code} |" in row, f"docs/errors.md: {case!r} should be {code}: {row}"
