"""Server behaviour: API keys, in-flight limit, deadlines, no tracebacks, request ids, TLS and mutual
TLS, micro-batched query encoding."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from service_helpers import make_docs, make_tls_files, start_server

from tessera.client import (
    Client,
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from tessera.proto.tessera.v1 import tessera_pb2 as pb
from tessera.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc

RW, RO = "rw-secret-key", "ro-secret-key"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, tiny_model_dir):
    srv = start_server(tmp_path_factory.mktemp("auth"), api_keys=[RW], read_only_keys=[RO])
    with Client(f"127.0.0.1:{srv.port}", api_key=RW) as c:
        c.create_collection("c", str(tiny_model_dir))
        c.upsert("c", make_docs(20))
    yield srv
    srv.stop()


def test_api_keys(secured):
    target = f"127.0.0.1:{secured.port}"
    with Client(target) as anon, Client(target, api_key="wrong") as wrong:
        for c in (anon, wrong):
            with pytest.raises(Unauthenticated, match="API key"):
                c.search("c", "cell")
            assert c.health() == "SERVING"  # health needs no key (load balancers, probes)
    with Client(target, api_key=RO) as ro:
        assert len(ro.search("c", "cell", k=3)) == 3
        assert ro.get("c", ["d1"]).documents and ro.stats().collections and ro.list_collections()
        for write in (
            lambda: ro.upsert("c", [{"id": "x", "text": "y"}]),
            lambda: ro.delete("c", ["d1"]),
            lambda: ro.create_collection("c2", "m"),
            lambda: ro.drop_collection("c"),
            lambda: ro.bulk_upsert("c", [{"id": "x", "text": "y"}], progress=False),
        ):
            with pytest.raises(PermissionDenied, match="read-only"):
                write()
    with Client(target, api_key=RW) as rw:
        assert rw.upsert("c", [{"id": "x", "text": "new doc"}]).inserted == 1
    # the bare key (without "Bearer ") is accepted too
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.TesseraStub(ch)
        resp = stub.Stats(pb.StatsRequest(), metadata=(("authorization", RO),), timeout=10)
        assert resp.collections[0].name == "c"


def test_internal_errors_carry_no_traceback(secured, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret detail: /etc/passwd at line 12")

    monkeypatch.setattr(secured.engine, "stats", boom)
    with grpc.insecure_channel(f"127.0.0.1:{secured.port}") as ch:
        stub = pb_grpc.TesseraStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Stats(
                pb.StatsRequest(), metadata=(("authorization", f"Bearer {RW}"), ("x-request-id", "req-42"))
            )
    err = info.value
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error (request id req-42)"
    assert dict(err.trailing_metadata())["x-request-id"] == "req-42"


def test_request_id_is_returned(secured):
    with grpc.insecure_channel(f"127.0.0.1:{secured.port}") as ch:
        stub = pb_grpc.TesseraStub(ch)
        _, call = stub.ListCollections.with_call(
            pb.ListCollectionsRequest(), metadata=(("authorization", RW), ("x-request-id", "abc-1"))
        )
        assert dict(call.trailing_metadata())["x-request-id"] == "abc-1"
        _, call = stub.ListCollections.with_call(
            pb.ListCollectionsRequest(), metadata=(("authorization", RW),)
        )
        assert len(dict(call.trailing_metadata())["x-request-id"]) == 16


def test_in_flight_limit_gives_resource_exhausted(tmp_path, tiny_model_dir):
    srv = start_server(tmp_path, max_in_flight=1)
    try:
        target = f"127.0.0.1:{srv.port}"
        with Client(target) as c:
            c.create_collection("c", str(tiny_model_dir))
        release = threading.Event()

        def slow_stream():
            yield pb.UpsertRequest(collection="c", documents=[pb.Document(id="a", text="held open")])
            release.wait(30)

        with grpc.insecure_channel(target) as ch:
            held = pb_grpc.TesseraStub(ch).BulkUpsert.future(slow_stream(), timeout=60)
            for _ in range(200):  # wait until the server counts the stream as in flight
                if srv.server.interceptor.in_flight == 1:
                    break
                time.sleep(0.01)
            with Client(target, max_retries=0) as c, pytest.raises(ResourceExhausted, match="in flight"):
                c.search("c", "anything")
            release.set()
            assert held.result().inserted == 1
        with Client(target) as c:
            assert c.search("c", "held open", k=1).ids == ["a"]
    finally:
        srv.stop()


def test_deadlines(secured):
    with Client(f"127.0.0.1:{secured.port}", api_key=RW) as c:
        with pytest.raises(DeadlineExceeded):
            c.batch_search("c", ["cell"] * 8, k=5, method="prf", timeout=0.0005)
        assert len(c.search("c", "cell", k=2, timeout=10)) == 2  # the server is fine afterwards


def test_tls_and_mutual_tls(tmp_path, tiny_model_dir):
    files = make_tls_files(tmp_path / "pki")
    srv = start_server(tmp_path / "d1", tls_cert=files["server_cert"], tls_key=files["server_key"])
    try:
        with Client(f"127.0.0.1:{srv.port}", root_certificates=files["ca"]) as c:
            assert c.create_collection("c", str(tiny_model_dir)).name == "c"
        with Client(f"127.0.0.1:{srv.port}", timeout=3, max_retries=0) as plain, pytest.raises(ServiceError):
            plain.list_collections()
    finally:
        srv.stop()
    srv = start_server(
        tmp_path / "d2",
        tls_cert=files["server_cert"],
        tls_key=files["server_key"],
        tls_client_ca=files["ca"],
    )
    try:
        target = f"127.0.0.1:{srv.port}"
        with Client(target, root_certificates=files["ca"], timeout=3, max_retries=0) as no_cert:
            with pytest.raises(Unavailable):
                no_cert.list_collections()
        with Client(
            target,
            root_certificates=files["ca"],
            client_certificate=files["client_cert"],
            client_key=files["client_key"],
        ) as c:
            assert c.list_collections() == []
    finally:
        srv.stop()


def test_concurrent_queries_are_encoded_in_micro_batches(tmp_path, tiny_model_dir):
    srv = start_server(tmp_path, query_batch_wait_ms=30)
    try:
        target = f"127.0.0.1:{srv.port}"
        with Client(target) as c:
            c.create_collection("c", str(tiny_model_dir))
            c.upsert("c", make_docs(20))
            batcher = srv.engine._live["c"].slot.batcher
            before_batches, before_texts = batcher.batches, batcher.encoded
            results = [None] * 8
            threads = [
                threading.Thread(target=lambda i=i: results.__setitem__(i, c.search("c", f"cell {i}", k=2)))
                for i in range(8)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert all(len(r) == 2 for r in results)
        assert batcher.encoded - before_texts == 8
        assert batcher.batches - before_batches < 8
    finally:
        srv.stop()
