"""Prometheus metrics of the server (a registry per server, so tests can run several)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from tessera.service.engine import Observer

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _CollectionCollector:
    """Documents, pending documents and vectors per collection, read at scrape time."""

    def __init__(self, engine_ref) -> None:
        self._engine_ref = engine_ref

    def collect(self):
        docs = GaugeMetricFamily(
            "tessera_collection_documents", "Documents in the store", labels=["collection"]
        )
        pending = GaugeMetricFamily(
            "tessera_collection_pending_documents",
            "Documents not yet confirmed in the index",
            labels=["collection"],
        )
        vectors = GaugeMetricFamily(
            "tessera_collection_vectors", "Live token vectors in the index", labels=["collection"]
        )
        engine = self._engine_ref()
        if engine is not None:
            try:
                for c in engine.stats().collections:
                    docs.add_metric([c.name], c.documents)
                    pending.add_metric([c.name], c.pending_documents)
                    vectors.add_metric([c.name], c.vectors)
            except Exception:  # noqa: BLE001 - a scrape must not fail the server
                log.debug("collection metrics unavailable", exc_info=True)
        yield docs
        yield pending
        yield vectors


class Metrics(Observer):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tessera_requests", "gRPC requests by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "tessera_request_duration_seconds",
            "gRPC request latency by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("tessera_requests_in_flight", "gRPC requests being handled", registry=r)
        self.encode_seconds = Histogram(
            "tessera_encode_duration_seconds",
            "Time to encode one batch (kind: query or document)",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts_encoded = Counter("tessera_encoded_texts", "Texts encoded", ["kind"], registry=r)
        self.search_seconds = Histogram(
            "tessera_search_duration_seconds",
            "Index search time per call by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._engine = None
        r.register(_CollectionCollector(lambda: self._engine))
        self._http = None

    def attach(self, engine) -> None:
        self._engine = engine

    # Observer hooks
    def encoded(self, kind: str, count: int, seconds: float) -> None:
        self.encode_seconds.labels(kind).observe(seconds)
        self.texts_encoded.labels(kind).inc(count)

    def searched(self, method: str, queries: int, seconds: float) -> None:
        self.search_seconds.labels(method).observe(seconds)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics; returns the bound port (``port=0`` picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_address[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
