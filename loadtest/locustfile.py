"""Locust load test of a Tessera server over gRPC, through the real SDK (``tessera.client.Client``).

    locust -f loadtest/locustfile.py --headless -u 16 -r 16 -t 60s --host 127.0.0.1:50051 \\
        --collection loadtest --api-key KEY [--queries FILE] [--mix mixed|plaid|read|NAME=W,...] [--rate QPS]

Each simulated user holds one SDK client (one channel) and picks an action per task run, weighted by
the mix: searches across the methods (plaid, xtr, prf, exact), batch searches, gets, and a few upserts
and deletes of documents the user itself added (so the collection keeps its size). Every SDK call is
reported to Locust as a ``grpc`` request named ``Search/<method>``, ``BatchSearch/plaid``, ``Get``,
``Upsert`` or ``Delete``; a failed call (any SDK error: RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ...) or a
search with no hits counts as a failure, grouped by status code. ``response_length`` is the number of
hits (searches) or documents (writes, gets).

Pacing: ``--rate QPS`` is the target total request rate; each user draws Poisson arrivals at
QPS/users (at most one call outstanding per user, so use more users than QPS x latency). Without it,
each user calls back to back (closed loop). Options also come from the environment: TESSERA_COLLECTION,
TESSERA_API_KEY, TESSERA_QUERIES, TESSERA_MIX, TESSERA_RATE, TESSERA_K, TESSERA_TIMEOUT.
"""

from __future__ import annotations

# gRPC must be switched to gevent before any channel exists (Locust has monkey-patched the stdlib).
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import itertools  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import deque  # noqa: E402

from locust import User, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from tessera.client import Client, ServiceError  # noqa: E402
from tessera.loadtest.workload import DEFAULT_QUERIES, load_queries, parse_mix  # noqa: E402


class RequestFailed(Exception):
    """A failed call as Locust shows it: ``CODE: message``."""


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("Tessera")
    group.add_argument("--collection", default="loadtest", env_var="TESSERA_COLLECTION", help="collection name")
    group.add_argument("--api-key", default="", env_var="TESSERA_API_KEY", help="API key (read-write for writes)")
    group.add_argument(
        "--queries", default=str(DEFAULT_QUERIES), env_var="TESSERA_QUERIES", help="query texts (.txt or .jsonl)"
    )
    group.add_argument("--mix", default="mixed", env_var="TESSERA_MIX", help="mixed, read, plaid or ACTION=W,...")
    group.add_argument(
        "--rate", type=float, default=0.0, env_var="TESSERA_RATE", help="target total QPS (0: closed loop)"
    )
    group.add_argument("--k", type=int, default=10, env_var="TESSERA_K", help="results per search")
    group.add_argument("--timeout", type=float, default=10.0, env_var="TESSERA_TIMEOUT", help="deadline per call (s)")
    group.add_argument("--tls", action="store_true", default=False, help="connect with TLS")
    group.add_argument(
        "--request-log", default="", help="also write every call (start, name, ms, status) to this CSV file"
    )


_shared: dict = {}


@events.test_start.add_listener
def _load(environment, **_kw) -> None:
    opts = environment.parsed_options
    _shared["queries"] = load_queries(opts.queries)
    _shared["mix"] = parse_mix(opts.mix)
    _shared["run"] = uuid.uuid4().hex[:8]  # ids of documents this run adds
    if opts.request_log and "log" not in _shared:
        _shared["log"] = log = open(opts.request_log, "w", encoding="utf-8")  # noqa: SIM115 - closed at quit
        log.write("start_s,name,ms,status\n")


@events.request.add_listener
def _log_request(name, response_time, exception=None, **_kw) -> None:
    log = _shared.get("log")
    if log is not None:
        status = "OK" if exception is None else str(exception).split(":", 1)[0]
        log.write(f"{time.time() - response_time / 1000:.3f},{name},{response_time:.2f},{status}\n")


@events.quit.add_listener
def _close_log(**_kw) -> None:
    log = _shared.pop("log", None)
    if log is not None:
        log.close()


class TesseraUser(User):
    """One client of the service; each task run is one SDK call chosen by the mix."""

    _ids = itertools.count()

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        if "queries" not in _shared:
            _load(self.environment)
        target = (self.host or "127.0.0.1:50051").removeprefix("grpc://")
        self.client = Client(target, api_key=opts.api_key or None, tls=opts.tls, timeout=opts.timeout, max_retries=0)
        self.collection, self.k = opts.collection, opts.k
        self.queries: list[str] = _shared["queries"]
        mix = _shared["mix"]
        self.actions, self.weights = list(mix), list(mix.values())
        self.number = next(self._ids)
        self.own: deque[str] = deque()  # documents this user added and has not deleted yet
        users = max(1, opts.num_users or 1)
        self.rate = opts.rate / users if opts.rate > 0 else 0.0
        self._next = time.perf_counter() + (random.expovariate(self.rate) if self.rate else 0.0)
        if self.rate:  # the first call too waits for its arrival: no burst of every user at the start
            time.sleep(max(0.0, self._next - time.perf_counter()))

    def wait_time(self) -> float:
        """Poisson arrivals at ``rate`` per user; no catching up after a slow call."""
        if not self.rate:
            return 0.0
        now = time.perf_counter()
        self._next = max(self._next + random.expovariate(self.rate), now)
        return self._next - now

    def on_stop(self) -> None:
        if getattr(self, "client", None) is None:
            return
        try:  # leave the collection as it was; not reported
            while self.own:
                batch = [self.own.popleft() for _ in range(min(len(self.own), 100))]
                self.client.delete(self.collection, batch)
        except ServiceError:
            pass
        self.client.close()
        self.client = None

    # -- reporting ---------------------------------------------------------------------------------
    def _call(self, name: str, fn, size=len) -> None:
        start = time.perf_counter()
        exc: Exception | None = None
        length = 0
        try:
            result = fn()
            length = size(result)
        except ServiceError as err:
            exc = RequestFailed(f"{err.code}: {err.message}")
        except ValueError as err:  # e.g. a search with no hits
            exc = RequestFailed(str(err))
        except StopUser:
            raise
        except Exception as err:  # noqa: BLE001 - anything else is a failure too, reported by type
            exc = RequestFailed(f"{type(err).__name__}: {err}")
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=exc,
            context={"user": self.number},
        )

    @staticmethod
    def _hits(result) -> int:
        if not result.hits:
            raise ValueError("NO_HITS: the search returned no documents")
        return len(result.hits)

    # -- the one task: an action drawn from the mix ------------------------------------------------
    @task
    def act(self) -> None:
        getattr(self, random.choices(self.actions, self.weights)[0])()

    def _search(self, method: str) -> None:
        query = random.choice(self.queries)
        self._call(
            f"Search/{method}",
            lambda: self.client.search(self.collection, query, k=self.k, method=method),
            self._hits,
        )

    def search_plaid(self) -> None:
        self._search("plaid")

    def search_xtr(self) -> None:
        self._search("xtr")

    def search_prf(self) -> None:
        self._search("prf")

    def search_exact(self) -> None:
        self._search("exact")

    def batch_search(self) -> None:
        queries = random.sample(self.queries, min(len(self.queries), random.randint(4, 8)))

        def run():
            results = self.client.batch_search(self.collection, queries, k=self.k, method="plaid")
            return sum(self._hits(r) for r in results)

        self._call("BatchSearch/plaid", run, int)

    def get(self) -> None:
        ids = list(self.own)[:3]
        if not ids:
            return self.upsert()
        self._call("Get", lambda: self.client.get(self.collection, ids), lambda r: len(r.documents))

    def upsert(self) -> None:
        n = random.randint(1, 3)
        docs = []
        for _ in range(n):
            text = " ".join(random.sample(self.queries, min(3, len(self.queries))))
            doc_id = f"lt-{_shared['run']}-{self.number}-{uuid.uuid4().hex[:8]}"
            docs.append({"id": doc_id, "text": text, "metadata": {"source": "loadtest", "user": self.number}})

        def run():
            result = self.client.upsert(self.collection, docs)
            self.own.extend(d["id"] for d in docs)
            return result

        self._call("Upsert", run, lambda r: n)

    def delete(self) -> None:
        if not self.own:
            return self.upsert()
        ids = [self.own.popleft() for _ in range(min(len(self.own), random.randint(1, 2)))]
        self._call("Delete", lambda: self.client.delete(self.collection, ids), lambda deleted: deleted)
