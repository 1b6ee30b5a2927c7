"""Past capacity the server sheds load with RESOURCE_EXHAUSTED rather than letting calls time out: a call
that waited too long for a worker thread is refused without being run."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from service_helpers import make_docs, start_server

from tessera.client import Client, DeadlineExceeded, ResourceExhausted
from tessera.service.servicer import TesseraServicer


@pytest.fixture
def one_worker(tmp_path, tiny_model_dir, request):
    """A server with a single worker thread and a small collection; ``block(s)`` holds that thread."""
    srv = start_server(tmp_path, workers=1, **request.param)
    target = f"127.0.0.1:{srv.port}"
    with Client(target) as c:
        c.create_collection("c", str(tiny_model_dir))
        c.upsert("c", make_docs(20))

    def block(seconds: float) -> threading.Event:
        started = threading.Event()
        srv.server._executor.submit(lambda: (started.set(), time.sleep(seconds)))
        started.wait(5)
        return started

    yield srv, target, block
    srv.stop()


@pytest.mark.parametrize("one_worker", [{"max_queue_ms": 200}], indirect=True)
def test_a_call_queued_past_the_budget_is_refused_and_not_run(one_worker):
    srv, target, block = one_worker
    searched = srv.server.metrics  # records every search that ran
    with Client(target, max_retries=0, timeout=10) as c:
        before = _searches(searched)
        block(0.6)
        t0 = time.monotonic()
        with pytest.raises(ResourceExhausted, match="waited .* ms for a worker thread"):
            c.search("c", "cell protein", k=3)
        assert 0.5 < time.monotonic() - t0 < 5  # answered when the worker freed up, well before the deadline
        assert _searches(searched) == before  # the refused call did no work
        assert len(c.search("c", "cell protein", k=3)) == 3  # an idle server serves as usual


@pytest.mark.parametrize("one_worker", [{"max_queue_ms": 0}], indirect=True)
def test_without_a_fixed_budget_half_the_deadline_is_the_budget(one_worker):
    _, target, block = one_worker
    with Client(target, max_retries=0) as c:
        block(1.0)
        with pytest.raises(ResourceExhausted, match="queue budget"):
            c.search("c", "cell", k=3, timeout=1.5)  # waits ~1 s > 0.75 s: refused before the deadline
        block(0.3)
        assert len(c.search("c", "cell", k=3, timeout=5)) == 3  # waits ~0.3 s < 2.5 s: served


def _searches(metrics) -> float:
    return sum(
        s.value
        for m in metrics.registry.collect()
        if m.name == "tessera_search_duration_seconds"
        for s in m.samples
        if s.name.endswith("_count")
    )


class _Context:
    """A gRPC context stand-in whose remaining time is set by the test."""

    def __init__(self, remaining):
        self.remaining = remaining

    def time_remaining(self):
        return self.remaining() if callable(self.remaining) else self.remaining


def _servicer(delay_s: float = 0.0, max_queue_s: float | None = None) -> TesseraServicer:
    pool = ThreadPoolExecutor(1)
    if delay_s:
        pool.submit(time.sleep, delay_s)  # the only worker is busy for delay_s
    return TesseraServicer(engine=None, executor=pool, max_queue_s=max_queue_s)


def test_queue_budget_rules():
    ran = []
    # a deadline far too short for a queue budget (0.1 ms left): the budget floor lets an idle server run it
    assert asyncio.run(_servicer()._run(_Context(1e-4), lambda: ran.append(1) or "ok")) == "ok" and ran == [1]
    # the deadline passed while the call waited for the worker: DEADLINE_EXCEEDED, not run
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        asyncio.run(_servicer(0.1)._run(_Context(lambda: 0.05 - (time.monotonic() - t0)), lambda: ran.append(2)))
    # waited longer than half of a deadline that has not passed yet: RESOURCE_EXHAUSTED, not run
    with pytest.raises(ResourceExhausted, match="queue budget 50 ms"):
        asyncio.run(_servicer(0.1)._run(_Context(0.1), lambda: ran.append(3)))
    # a fixed budget without a deadline
    with pytest.raises(ResourceExhausted, match="queue budget 20 ms"):
        asyncio.run(_servicer(0.1, max_queue_s=0.02)._run(_Context(None), lambda: ran.append(4)))
    assert ran == [1]
