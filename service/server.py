"""The gRPC server (grpc.aio): Tessera service, health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from tessera.errors import TesseraError
from tessera.proto.tessera.v1 import tessera_pb2 as pb
from tessera.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from tessera.service.engine import Engine
from tessera.service.interceptor import SERVICE, Keys, TesseraInterceptor
from tessera.service.limits import Limits
from tessera.service.metrics import Metrics
from tessera.service.servicer import TesseraServicer

log = logging.getLogger(__name__)


def default_workers() -> int:
    """Worker threads: one per CPU core this process may use (at least 2, at most 16). Searches are
    CPU-bound and run one torch thread each (``tessera serve --torch-threads``, default 1): more of them
    at once than the cores can run only makes every one slower (measured: docs/benchmarks.md, load)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        cores = os.cpu_count() or 1
    return max(2, min(16, cores))


@dataclass
class ServerConfig:
    data_dir: str | Path
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port
    api_keys: list[str] = field(default_factory=list)  # read-write
    read_only_keys: list[str] = field(default_factory=list)
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    tls_client_ca: str | Path | None = None  # mutual TLS: clients must present a certificate it signed
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"
    max_in_flight: int = 64
    max_queue_ms: float = 1000.0  # a call waiting longer for a worker gets RESOURCE_EXHAUSTED (0: deadline only)
    max_message_bytes: int = 32 * 1024 * 1024
    workers: int = field(default_factory=default_workers)
    grace_s: float = 30.0
    limits: Limits = field(default_factory=Limits)
    max_query_batch: int = 32
    query_batch_wait_ms: float = 0.0
    device: str = "cpu"
    # encoder inference backends (tessera.training.runtime): torch, torch-int8, onnx, onnx-int8, auto
    query_backend: str = "torch"
    doc_backend: str = "torch"
    encoder_threads: int | None = None  # intra-op threads of the backends (None: their default)


def _read(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TesseraError(f"cannot read {path}: {exc.strerror}") from None


class TesseraServer:
    """Build with a config, ``await start()``, ``await stop()``; or ``run_in_thread`` for tests."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.metrics = Metrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="tessera-worker")
        self.interceptor: TesseraInterceptor | None = None

    def _credentials(self):
        c = self.config
        if not (c.tls_cert or c.tls_key):
            if c.tls_client_ca:
                raise TesseraError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if not (c.tls_cert and c.tls_key):
            raise TesseraError("TLS needs both --tls-cert and --tls-key")
        ca = _read(c.tls_client_ca) if c.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(_read(c.tls_key), _read(c.tls_cert))], root_certificates=ca, require_client_auth=ca is not None
        )

    async def start(self) -> int:
        c = self.config
        creds = self._credentials()
        self.engine = await asyncio.get_running_loop().run_in_executor(
            self._executor,
            lambda: Engine(
                c.data_dir,
                c.db_url,
                limits=c.limits,
                device=c.device,
                observer=self.metrics,
                max_query_batch=c.max_query_batch,
                query_batch_wait_ms=c.query_batch_wait_ms,
                query_backend=c.query_backend,
                doc_backend=c.doc_backend,
                encoder_threads=c.encoder_threads,
            ),
        )
        self.metrics.attach(self.engine)
        self.interceptor = TesseraInterceptor(
            Keys(c.api_keys, c.read_only_keys), c.max_in_flight, self.metrics
        )
        server = grpc.aio.server(
            interceptors=[self.interceptor],
            options=[
                ("grpc.max_receive_message_length", c.max_message_bytes),
                ("grpc.max_send_message_length", c.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = TesseraServicer(self.engine, self._executor, c.max_queue_ms / 1000)
        pb_grpc.add_TesseraServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["Tessera"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{c.host}:{c.port}"
        try:
            port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        except RuntimeError as exc:
            raise TesseraError(f"cannot listen on {address}: {exc}") from None
        await server.start()
        self._server = server
        self.port = port
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        if c.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(c.metrics_port, c.metrics_host)
        log.info(
            "serving on %s:%d (%s)",
            c.host,
            port,
            "TLS" if creds else "plaintext",
            extra={"port": port, "metrics_port": self.metrics_port, "data_dir": str(c.data_dir)},
        )
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight calls finish (up to ``grace`` s), flush and close."""
        grace = self.config.grace_s if grace is None else grace
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace)
            self._server = None
        loop = asyncio.get_running_loop()
        if self.engine is not None:
            await loop.run_in_executor(self._executor, self.engine.close)
            self.engine = None
        self._executor.shutdown(wait=True)
        self.metrics.close()
        log.info("stopped")


async def _serve(config: ServerConfig) -> int:
    server = TesseraServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except BaseException:
        await server.stop(0)
        raise
    await stop.wait()
    log.info("shutting down: draining in-flight calls (up to %.0f s)", config.grace_s)
    await server.stop()
    return 0


def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; then drain, flush and return 0."""
    return asyncio.run(_serve(config))


class ServerThread:
    """A server on its own event loop in a background thread (tests, notebooks, the demo)."""

    def __init__(self, config: ServerConfig) -> None:
        self.server = TesseraServer(config)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tessera-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:  # noqa: BLE001 - re-raised in start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def engine(self) -> Engine:
        return self.server.engine

    def stop(self, grace: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop)
        fut.result(timeout=grace + 60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
