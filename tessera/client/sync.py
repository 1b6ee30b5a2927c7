"""The synchronous client: ``Client("host:port")`` for a server, ``Client.local(path)`` in-process."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import grpc
from tqdm.auto import tqdm

from tessera.client import convert, requests
from tessera.client.channel import Connection, map_error
from tessera.client.errors import DeadlineExceeded
from tessera.client.filters import Filter
from tessera.client.types import (
    CollectionInfo,
    Document,
    GetResult,
    RerankHit,
    SearchResult,
    ServerStats,
    UpsertResult,
)
from tessera.proto.tessera.v1 import tessera_pb2 as pb
from tessera.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc

Query = str | Sequence[Sequence[float]]  # text, or [tokens, dim] vectors (array, tensor, lists)


class Client:
    """Tessera client. Results are plain dataclasses; errors are ``tessera.client.errors`` classes.

    ``Client(target, api_key=..., tls=..., timeout=...)`` talks to a server; ``Client.local(path)``
    runs the same engine in this process (no server), with the same methods and results.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        client_certificate: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        timeout: float | None = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.1,
        max_message_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self._engine = None
        self.conn = Connection(
            target,
            api_key,
            tls,
            root_certificates,
            client_certificate,
            client_key,
            timeout,
            max_retries,
            backoff_s,
            max_message_bytes=max_message_bytes,
        )
        creds = self.conn.credentials()
        opts = self.conn.options()
        self._channel = (
            grpc.secure_channel(target, creds, opts) if creds else grpc.insecure_channel(target, opts)
        )
        self._stub = pb_grpc.TesseraStub(self._channel)

    @classmethod
    def local(cls, path: str | Path, *, db_url: str | None = None, **engine_options) -> Client:
        """In-process mode over the data directory ``path`` (created when new); no server involved."""
        from tessera.service.engine import Engine

        self = cls.__new__(cls)
        self._engine = Engine(path, db_url, **engine_options)
        self.conn = None
        self._channel = None
        self._stub = None
        return self

    @property
    def is_local(self) -> bool:
        return self._engine is not None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------------
    def _call(self, method: str, request, timeout: float | None = None):
        timeout = self.conn.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DeadlineExceeded(f"{method}: the deadline passed after {attempt} attempt(s)")
            try:
                return getattr(self._stub, method)(request, timeout=left, metadata=self.conn.metadata())
            except grpc.RpcError as exc:
                if self.conn.retryable(method, exc, attempt):
                    pause = self.conn.delay(attempt)
                    if deadline is None or time.monotonic() + pause < deadline:
                        time.sleep(pause)
                        attempt += 1
                        continue
                raise map_error(exc) from None

    def health(self, timeout: float | None = 5.0) -> str:
        """The server's health status name (``SERVING``), or ``LOCAL`` in local mode."""
        if self._engine is not None:
            return "LOCAL"
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            raise map_error(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    # -- collections ------------------------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        model: str,
        *,
        nbits: int = 0,
        default_method: str = "",
        index_settings: Mapping | None = None,
        if_not_exists: bool = False,
        timeout: float | None = None,
    ) -> CollectionInfo:
        if self._engine is not None:
            return self._engine.create_collection(
                name,
                model,
                nbits=nbits,
                default_method=default_method,
                index_settings=index_settings,
                if_not_exists=if_not_exists,
            )
        req = requests.create_collection(name, model, nbits, default_method, index_settings, if_not_exists)
        return convert.collection_from_proto(self._call("CreateCollection", req, timeout))

    def list_collections(self, *, timeout: float | None = None) -> list[CollectionInfo]:
        if self._engine is not None:
            return self._engine.list_collections()
        resp = self._call("ListCollections", pb.ListCollectionsRequest(), timeout)
        return [convert.collection_from_proto(c) for c in resp.collections]

    def describe_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        if self._engine is not None:
            return self._engine.describe_collection(name)
        return convert.collection_from_proto(
            self._call("DescribeCollection", pb.DescribeCollectionRequest(name=name), timeout)
        )

    def drop_collection(self, name: str, *, if_exists: bool = False, timeout: float | None = None) -> bool:
        if self._engine is not None:
            return self._engine.drop_collection(name, if_exists=if_exists)
        req = pb.DropCollectionRequest(name=name, if_exists=if_exists)
        return self._call("DropCollection", req, timeout).dropped

    # -- documents --------------------------------------------------------------------------------
    def upsert(
        self,
        collection: str,
        documents: Iterable[Document | Mapping | tuple],
        *,
        timeout: float | None = None,
    ) -> UpsertResult:
        """Insert or replace one batch; returns once it is durable on the server."""
        if self._engine is not None:
            return self._engine.upsert(collection, documents)
        return convert.upsert_from_proto(
            self._call("Upsert", requests.upsert(collection, documents), timeout)
        )

    def bulk_upsert(
        self,
        collection: str,
        documents: Iterable[Document | Mapping | tuple],
        *,
        batch_size: int = 256,
        progress: bool | None = None,
        total: int | None = None,
        timeout: float | None = None,
    ) -> UpsertResult:
        """Stream any number of documents in batches (one BulkUpsert call), with a progress bar.

        ``progress=None`` shows the bar on a terminal only. ``timeout`` bounds the whole stream
        (default: none). Not retried: on failure, upsert again (unchanged documents cost nothing)."""
        if total is None and hasattr(documents, "__len__"):
            total = len(documents)
        bar = tqdm(
            total=total,
            unit="doc",
            desc=f"upserting into {collection}",
            disable=None if progress is None else not progress,
            dynamic_ncols=True,
        )

        def batches():
            for chunk in requests.chunks(documents, batch_size):
                yield chunk
                bar.update(len(chunk))

        failed: list[BaseException] = []

        def stream():
            try:
                for chunk in batches():
                    yield requests.upsert(collection, chunk)
            except BaseException as exc:  # re-raised below; gRPC only cancels the call
                failed.append(exc)
                raise

        try:
            if self._engine is not None:
                return self._engine.bulk_upsert(collection, batches())
            try:
                resp = self._stub.BulkUpsert(stream(), timeout=timeout, metadata=self.conn.metadata())
            except grpc.RpcError as exc:
                if failed:
                    raise failed[0] from None
                raise map_error(exc) from None
            return convert.upsert_from_proto(resp)
        finally:
            bar.close()

    def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        filter: Filter | Mapping | None = None,
        timeout: float | None = None,
    ) -> int:
        """Delete by ids or by metadata filter; returns how many documents existed."""
        if self._engine is not None:
            return self._engine.delete(collection, ids=ids, filter=filter)
        return self._call("Delete", requests.delete(collection, ids, filter), timeout).deleted

    def get(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> GetResult:
        if self._engine is not None:
            return self._engine.get(collection, ids)
        resp = self._call("Get", pb.GetRequest(collection=collection, ids=list(ids)), timeout)
        return convert.get_result_from_proto(resp)

    # -- retrieval --------------------------------------------------------------------------------
    def search(
        self,
        collection: str,
        query: Query,
        *,
        k: int = 10,
        method: str | None = None,
        params: Mapping | None = None,
        filter: Filter | Mapping | None = None,
        fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> SearchResult:
        """Top-k documents for a query text (or [tokens, dim] query vectors)."""
        if self._engine is not None:
            return self._engine.search(
                collection,
                query,
                k=k,
                method=method,
                params=params,
                filter=filter,
                fields=fields,
                timeout=timeout,
            )
        req = requests.search(collection, query, k, method, params, filter, fields)
        resp = self._call("Search", req, timeout)
        return convert.search_result_from_proto(resp.result, resp.took_ms, fields)

    def batch_search(
        self,
        collection: str,
        queries: Sequence[Query],
        *,
        k: int = 10,
        method: str | None = None,
        params: Mapping | None = None,
        filter: Filter | Mapping | None = None,
        fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> list[SearchResult]:
        if self._engine is not None:
            return self._engine.batch_search(
                collection,
                queries,
                k=k,
                method=method,
                params=params,
                filter=filter,
                fields=fields,
                timeout=timeout,
            )
        req = requests.batch_search(collection, queries, k, method, params, filter, fields)
        resp = self._call("BatchSearch", req, timeout)
        return [convert.search_result_from_proto(r, resp.took_ms, fields) for r in resp.results]

    def rerank(
        self,
        collection: str,
        query: Query,
        *,
        ids: Sequence[str] | None = None,
        passages: Sequence[str] | None = None,
        top_k: int = 0,
        fields: Sequence[str] = (),
        timeout: float | None = None,
    ) -> list[RerankHit]:
        """Exact MaxSim of the query against candidate ids (in the collection) or raw passages."""
        if self._engine is not None:
            return self._engine.rerank(
                collection, query, ids=ids, passages=passages, top_k=top_k, fields=fields, timeout=timeout
            )
        req = requests.rerank(collection, query, ids, passages, top_k, fields)
        return convert.rerank_from_proto(self._call("Rerank", req, timeout), bool(ids), fields)

    def stats(self, collection: str | None = None, *, timeout: float | None = None) -> ServerStats:
        if self._engine is not None:
            return self._engine.stats(collection)
        return convert.stats_from_proto(
            self._call("Stats", pb.StatsRequest(collection=collection or ""), timeout)
        )
