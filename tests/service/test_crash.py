"""Crash safety and shutdown of a real `tessera serve` process: SIGKILL in the middle of upserts,
restart, and every acknowledged document is searchable while nothing half-written is visible;
SIGTERM drains and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from service_helpers import WORDS

from tessera.client import Client, ServiceError

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`python -m tessera.cli serve` on a free port; the port is read from its JSON log."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tessera.cli",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--torch-threads",
                "1",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: list[str] = []
        self.port = None
        deadline = time.monotonic() + 120
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("server exited during start-up:\n" + "".join(self.lines[-30:]))
            self.lines.append(line)
            if '"serving on' in line:
                self.port = json.loads(line)["port"]
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self._reader.join(10)
        return rc


def doc(i: int) -> dict:
    words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8 + i % 9))
    return {"id": f"k{i}", "text": f"{words} {i}", "metadata": {"key": f"k{i}", "n": i}}


def test_sigkill_during_upserts_then_restart(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    server = ServerProcess(data)
    acked: list[str] = []
    sent: list[str] = []
    try:
        with Client(server.target, timeout=60, max_retries=0) as c:
            c.create_collection("c", str(tiny_model_dir))
            stream_error: list[Exception] = []

            def bulk():  # a client-streaming bulk upsert that the kill interrupts
                def gen():
                    for i in range(1000, 1600):
                        sent.append(f"k{i}")
                        yield doc(i)

                try:
                    c.bulk_upsert("c", gen(), batch_size=20, progress=False)
                except ServiceError as exc:
                    stream_error.append(exc)

            streamer = threading.Thread(target=bulk)
            streamer.start()
            i = 0
            while len(acked) < 60:  # acknowledged batches of 10 upserted one call at a time
                batch = [doc(j) for j in range(i, i + 10)]
                sent.extend(d["id"] for d in batch)
                c.upsert("c", batch)
                acked.extend(d["id"] for d in batch)
                i += 10
            # one more upsert is in flight when the process is killed
            inflight = threading.Thread(
                target=lambda: _ignore(lambda: c.upsert("c", [doc(j) for j in range(i, i + 10)]))
            )
            sent.extend(f"k{j}" for j in range(i, i + 10))
            inflight.start()
            time.sleep(0.02)
            server.kill()
            inflight.join(30)
            streamer.join(30)
            assert stream_error, "the bulk stream should have been cut by the kill"
    finally:
        if server.proc.poll() is None:
            server.kill()

    server = ServerProcess(data)
    try:
        with Client(server.target, timeout=60) as c:
            stats = c.stats("c").collections[0]
            assert stats.pending_documents == 0
            present = {d.id for d in c.get("c", sent[:5000]).documents}
            assert set(acked) <= present, "acknowledged documents were lost"
            # the index holds exactly the documents the store has: an exhaustive exact search finds them all
            everything = c.search("c", "cell", k=1000, method="exact")
            assert set(everything.ids) == present and stats.documents == len(present)
            # every acknowledged document is searchable, with its own text and metadata
            hits = c.rerank("c", "protein", ids=acked)
            assert {h.id for h in hits} == set(acked)
            for doc_id in acked[::17]:
                got = c.search("c", "dna", k=1, method="exact", filter={"key": doc_id}, fields=["text"])
                assert got.ids == [doc_id] and got[0].text == doc(int(doc_id[1:]))["text"]
        assert server.terminate() == 0  # SIGTERM: drain, flush, exit 0
        assert any('"msg": "stopped"' in line for line in server.lines)
    finally:
        if server.proc.poll() is None:
            server.kill()


def _ignore(fn):
    try:
        fn()
    except ServiceError:
        pass


def test_shutdown_drains_in_flight_calls(tmp_path, tiny_model_dir):
    """What SIGTERM triggers (the kill test above checks the signal itself and the exit status 0):
    stop accepting calls, let the in-flight ones finish, flush."""
    from service_helpers import start_server

    srv = start_server(tmp_path / "data", grace_s=20)
    target = f"127.0.0.1:{srv.port}"
    with Client(target, timeout=60) as c:
        c.create_collection("c", str(tiny_model_dir))
        release = threading.Event()
        outcome: list = []

        def slow_stream():
            yield {"id": "a", "text": "first batch"}
            release.wait(30)
            yield {"id": "b", "text": "second batch after the signal"}

        t = threading.Thread(
            target=lambda: outcome.append(c.bulk_upsert("c", slow_stream(), batch_size=1, progress=False))
        )
        t.start()
        while srv.server.interceptor.in_flight == 0:
            time.sleep(0.01)
        stopper = threading.Thread(target=srv.stop, kwargs={"grace": 20})
        stopper.start()
        time.sleep(0.3)
        with Client(target, timeout=3, max_retries=0) as late, pytest.raises(ServiceError):
            late.list_collections()  # no new calls once draining
        release.set()
        t.join(30)
        stopper.join(30)
        assert outcome and outcome[0].inserted == 2  # the in-flight call completed
    srv = start_server(tmp_path / "data")
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            assert {d.id for d in c.get("c", ["a", "b"]).documents} == {"a", "b"}
        srv.engine.check_consistency("c")
    finally:
        srv.stop()
