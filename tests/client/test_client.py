"""The SDK: local mode and remote mode give the same results; AsyncClient; retries; progress bar;
plain dataclasses only; the `tessera search` command."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest
from google.protobuf.message import Message
from service_helpers import make_docs, start_server

from tessera.cli import main
from tessera.client import AsyncClient, Client, NotFound, Unavailable
from tessera.client import channel as channel_mod
from tessera.service.process import free_port

DOCS = make_docs(60)
QUERIES = ["protein expression in cancer", DOCS[9]["text"], "dog and cat"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("remote"))
    yield srv
    srv.stop()


def _exercise(c: Client, model: str) -> dict:
    """The same calls on any client; returns everything it got back (minus timings and timestamps)."""
    out = {}
    info = c.create_collection("col", model, index_settings={"auto_retrain": False})
    out["create"] = dataclasses.replace(info, created_at=None, model="")
    out["bulk"] = c.bulk_upsert("col", DOCS[:50], batch_size=25, progress=False)
    out["upsert"] = c.upsert("col", [*DOCS[50:], dict(DOCS[0], metadata={"lang": "xx"})])
    for method in ("exact", "plaid", "xtr", "prf", "two-stage"):
        out[method] = [r.hits for r in c.batch_search("col", QUERIES, k=6, method=method)]
    out["filtered"] = c.search(
        "col", QUERIES[0], k=6, filter={"year": {"$lt": 2010}}, fields=["metadata"]
    ).hits
    out["rerank"] = c.rerank("col", QUERIES[1], ids=["d9", "d3", "d0"], fields=["text"])
    out["rerank_passages"] = c.rerank("col", QUERIES[1], passages=["dog", DOCS[9]["text"]])
    got = c.get("col", ["d0", "zz"])
    out["get"] = ([dataclasses.replace(d, created_at=None, updated_at=None) for d in got], got.missing_ids)
    out["delete"] = (c.delete("col", ["d1", "d2"]), c.delete("col", filter={"lang": "de"}))
    info = c.describe_collection("col")
    out["describe"] = dataclasses.replace(info, created_at=None, model="")
    out["stats"] = [dataclasses.replace(s, disk_bytes=0) for s in c.stats().collections]
    with pytest.raises(NotFound):
        c.search("missing", "x")
    out["drop"] = c.drop_collection("col")
    out["list"] = c.list_collections()
    return out


def _assert_plain(value, path="result"):
    assert not isinstance(value, Message), f"{path} is a protobuf message"
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _assert_plain(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_plain(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _assert_plain(v, f"{path}[{i}]")


def test_local_mode_equals_remote_mode(server, tmp_path, tiny_model_dir):
    with Client(f"127.0.0.1:{server.port}") as remote:
        got_remote = _exercise(remote, str(tiny_model_dir))
    with Client.local(tmp_path / "local") as local:
        assert local.is_local and local.health() == "LOCAL"
        got_local = _exercise(local, str(tiny_model_dir))
    assert got_remote.keys() == got_local.keys()
    for key in got_remote:
        assert got_remote[key] == got_local[key], key
    _assert_plain(got_remote)
    assert got_remote["upsert"].inserted == 10 and got_remote["upsert"].unchanged == 1


def test_async_client_remote_and_local(server, tmp_path, tiny_model_dir):
    async def run(c: AsyncClient) -> list:
        await c.create_collection("a", str(tiny_model_dir), index_settings={"auto_retrain": False})

        async def docs():
            for d in DOCS[:30]:
                yield d

        up = await c.bulk_upsert("a", docs(), batch_size=8, progress=False)
        results = await asyncio.gather(*(c.search("a", q, k=4, method="exact") for q in QUERIES))
        batch = await c.batch_search("a", QUERIES, k=4, method="exact")
        assert [r.hits for r in results] == [r.hits for r in batch]
        rr = await c.rerank("a", QUERIES[0], ids=["d1", "d2"])
        got = await c.get("a", ["d1"])
        deleted = await c.delete("a", ["d1"])
        stats = await c.stats("a")
        names = [x.name for x in await c.list_collections()]
        dropped = await c.drop_collection("a")
        return [
            up,
            [r.hits for r in results],
            rr,
            got.documents[0].text,
            deleted,
            stats.collections[0].documents,
            names,
            dropped,
        ]

    async def both():
        async with AsyncClient(f"127.0.0.1:{server.port}") as remote:
            assert await remote.health() == "SERVING"
            r = await run(remote)
        async with AsyncClient.local(tmp_path / "alocal") as local:
            l_ = await run(local)
        return r, l_

    remote_out, local_out = asyncio.run(both())
    assert remote_out == local_out
    assert remote_out[0].inserted == 30 and remote_out[5] == 29 and remote_out[6] == ["a"]


def test_retries_on_unavailable_only_for_idempotent_calls(monkeypatch, tmp_path, tiny_model_dir):
    pauses: list[float] = []
    real_delay = channel_mod.Connection.delay

    def recording_delay(self, attempt):
        pauses.append(attempt)
        return real_delay(self, attempt)

    monkeypatch.setattr(channel_mod.Connection, "delay", recording_delay)
    port = free_port()
    with Client(f"127.0.0.1:{port}", max_retries=3, backoff_s=0.01, timeout=10) as c:
        with pytest.raises(Unavailable):
            c.search("c", "query")  # idempotent: tried 1 + 3 times
        assert pauses == [0, 1, 2]
        pauses.clear()
        with pytest.raises(Unavailable):
            c.create_collection("c", "model")  # not idempotent: never repeated
        with pytest.raises(Unavailable):
            c.bulk_upsert("c", [{"id": "a", "text": "b"}], progress=False)
        assert pauses == []

    # a server that comes up while the client backs off: the retried read succeeds
    holder = {}

    def late_start():
        time.sleep(0.5)
        holder["srv"] = start_server(tmp_path / "late", port=port)

    t = threading.Thread(target=late_start)
    t.start()
    try:
        with Client(f"127.0.0.1:{port}", max_retries=8, backoff_s=0.2, timeout=60) as c:
            assert c.list_collections() == []
        assert len(pauses) >= 1
    finally:
        t.join()
        holder["srv"].stop()


def test_bulk_upsert_progress_bar(server, tiny_model_dir, capsys):
    with Client(f"127.0.0.1:{server.port}") as c:
        c.create_collection("bar", str(tiny_model_dir))
        result = c.bulk_upsert("bar", (d for d in DOCS[:40]), batch_size=10, progress=True, total=40)
        c.drop_collection("bar")
    assert result.inserted == 40
    err = capsys.readouterr().err
    assert "upserting into bar" in err and "40/40" in err


def test_search_command(server, tmp_path, tiny_model_dir, capsys):
    with Client(f"127.0.0.1:{server.port}") as c:
        c.create_collection("cli", str(tiny_model_dir))
        c.upsert("cli", DOCS[:20])
        want = c.search("cli", "cell protein", k=3, method="exact", filter={"lang": "en"})
    rc = main(
        [
            "search",
            "cell protein",
            "-c",
            "cli",
            "--server",
            f"127.0.0.1:{server.port}",
            "-k",
            "3",
            "--method",
            "exact",
            "--filter",
            '{"lang": "en"}',
            "--json",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    import json

    assert [json.loads(line)["id"] for line in lines] == want.ids
    assert main(["search", "x", "-c", "nope", "--server", f"127.0.0.1:{server.port}"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    with Client.local(tmp_path / "l") as local:
        local.create_collection("cli", str(tiny_model_dir))
        local.upsert("cli", DOCS[:20])
    assert (
        main(
            [
                "search",
                "cell protein",
                "-c",
                "cli",
                "--data-dir",
                str(tmp_path / "l"),
                "-k",
                "3",
                "--method",
                "exact",
                "--param",
                "x=1",
            ]
        )
        == 2
    )  # unknown method parameter
    assert (
        main(
            [
                "search",
                "cell protein",
                "-c",
                "cli",
                "--data-dir",
                str(tmp_path / "l"),
                "-k",
                "3",
                "--method",
                "exact",
                "--filter",
                '{"lang": "en"}',
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert [line.split()[2] for line in out.strip().splitlines()] == want.ids


def test_bad_documents_in_a_bulk_stream_raise_the_real_error(server, tiny_model_dir):
    def docs():
        yield {"id": "ok", "text": "fine"}
        yield {"text": "no id here"}

    with Client(f"127.0.0.1:{server.port}") as c:
        c.create_collection("stream", str(tiny_model_dir))
        with pytest.raises(KeyError, match="id"):
            c.bulk_upsert("stream", docs(), batch_size=1, progress=False)
        c.drop_collection("stream")
