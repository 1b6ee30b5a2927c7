"""The asyncio client: the same methods as ``Client``, as coroutines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from pathlib import Path

import grpc
from tqdm.auto import tqdm

from tessera.client import convert, requests
from tessera.client.channel import Connection, map_error
from tessera.client.errors import DeadlineExceeded
from tessera.client.filters import Filter
from tessera.client.sync import Query
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


class AsyncClient:
    """``async with AsyncClient("host:port") as c: await c.search(...)``; ``AsyncClient.local(path)``
    runs the engine in this process (calls go to a worker thread)."""

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
            grpc.aio.secure_channel(target, creds, opts) if creds else grpc.aio.insecure_channel(target, opts)
        )
        self._stub = pb_grpc.TesseraStub(self._channel)

    @classmethod
    def local(cls, path: str | Path, *, db_url: str | None = None, **engine_options) -> AsyncClient:
        from tessera.service.engine import Engine

        self = cls.__new__(cls)
        self._engine = Engine(path, db_url, **engine_options)
        self.conn = None
        self._channel = None
        self._stub = None
        return self

    async def close(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _local(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _call(self, method: str, request, timeout: float | None = None):
        timeout = self.conn.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DeadlineExceeded(f"{method}: the deadline passed after {attempt} attempt(s)")
            try:
                return await getattr(self._stub, method)(request, timeout=left, metadata=self.conn.metadata())
            except grpc.RpcError as exc:
                if self.conn.retryable(method, exc, attempt):
                    pause = self.conn.delay(attempt)
                    if deadline is None or time.monotonic() + pause < deadline:
                        await asyncio.sleep(pause)
                        attempt += 1
                        continue
                raise map_error(exc) from None

    async def health(self, timeout: float | None = 5.0) -> str:
        if self._engine is not None:
            return "LOCAL"
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            raise map_error(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    # -- collections ------------------------------------------------------------------------------
    async def create_collection(
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
            return await self._local(
                self._engine.create_collection,
                name,
                model,
                nbits=nbits,
                default_method=default_method,
                index_settings=index_settings,
                if_not_exists=if_not_exists,
            )
        req = requests.create_collection(name, model, nbits, default_method, index_settings, if_not_exists)
        return convert.collection_from_proto(await self._call("CreateCollection", req, timeout))

    async def list_collections(self, *, timeout: float | None = None) -> list[CollectionInfo]:
        if self._engine is not None:
            return await self._local(self._engine.list_collections)
        resp = await self._call("ListCollections", pb.ListCollectionsRequest(), timeout)
        return [convert.collection_from_proto(c) for c in resp.collections]

    async def describe_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        if self._engine is not None:
            return await self._local(self._engine.describe_collection, name)
        resp = await self._call("DescribeCollection", pb.DescribeCollectionRequest(name=name), timeout)
        return convert.collection_from_proto(resp)

    async def drop_collection(
        self, name: str, *, if_exists: bool = False, timeout: float | None = None
    ) -> bool:
        if self._engine is not None:
            return await self._local(self._engine.drop_collection, name, if_exists=if_exists)
        resp = await self._call(
            "DropCollection", pb.DropCollectionRequest(name=name, if_exists=if_exists), timeout
        )
        return resp.dropped

    # -- documents --------------------------------------------------------------------------------
    async def upsert(
        self,
        collection: str,
        documents: Iterable[Document | Mapping | tuple],
        *,
        timeout: float | None = None,
    ) -> UpsertResult:
        if self._engine is not None:
            return await self._local(self._engine.upsert, collection, list(documents))
        resp = await self._call("Upsert", requests.upsert(collection, documents), timeout)
        return convert.upsert_from_proto(resp)

    async def bulk_upsert(
        self,
        collection: str,
        documents: Iterable | AsyncIterable,
        *,
        batch_size: int = 256,
        progress: bool | None = None,
        total: int | None = None,
        timeout: float | None = None,
    ) -> UpsertResult:
        """Stream documents (a sync or async iterable) in batches through one BulkUpsert call."""
        if total is None and hasattr(documents, "__len__"):
            total = len(documents)
        bar = tqdm(
            total=total,
            unit="doc",
            desc=f"upserting into {collection}",
            disable=None if progress is None else not progress,
            dynamic_ncols=True,
        )

        async def batches():
            if isinstance(documents, AsyncIterable):
                chunk = []
                async for d in documents:
                    chunk.append(d)
                    if len(chunk) >= batch_size:
                        yield chunk
                        bar.update(len(chunk))
                        chunk = []
                if chunk:
                    yield chunk
                    bar.update(len(chunk))
            else:
                for chunk in requests.chunks(documents, batch_size):
                    yield chunk
                    bar.update(len(chunk))

        try:
            if self._engine is not None:
                total_result = UpsertResult()
                async for chunk in batches():
                    total_result = total_result + await self._local(self._engine.upsert, collection, chunk)
                return total_result

            failed: list[BaseException] = []

            async def stream():
                try:
                    async for chunk in batches():
                        yield requests.upsert(collection, chunk)
                except Exception as exc:  # re-raised below; gRPC only cancels the call
                    failed.append(exc)
                    raise

            try:
                resp = await self._stub.BulkUpsert(stream(), timeout=timeout, metadata=self.conn.metadata())
            except grpc.RpcError as exc:
                if failed:
                    raise failed[0] from None
                raise map_error(exc) from None
            return convert.upsert_from_proto(resp)
        finally:
            bar.close()

    async def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        filter: Filter | Mapping | None = None,
        timeout: float | None = None,
    ) -> int:
        if self._engine is not None:
            return await self._local(self._engine.delete, collection, ids=ids, filter=filter)
        return (await self._call("Delete", requests.delete(collection, ids, filter), timeout)).deleted

    async def get(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> GetResult:
        if self._engine is not None:
            return await self._local(self._engine.get, collection, ids)
        resp = await self._call("Get", pb.GetRequest(collection=collection, ids=list(ids)), timeout)
        return convert.get_result_from_proto(resp)

    # -- retrieval --------------------------------------------------------------------------------
    async def search(
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
        if self._engine is not None:
            return await self._local(
                self._engine.search,
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
        resp = await self._call("Search", req, timeout)
        return convert.search_result_from_proto(resp.result, resp.took_ms, fields)

    async def batch_search(
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
            return await self._local(
                self._engine.batch_search,
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
        resp = await self._call("BatchSearch", req, timeout)
        return [convert.search_result_from_proto(r, resp.took_ms, fields) for r in resp.results]

    async def rerank(
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
        if self._engine is not None:
            return await self._local(
                self._engine.rerank,
                collection,
                query,
                ids=ids,
                passages=passages,
                top_k=top_k,
                fields=fields,
                timeout=timeout,
            )
        req = requests.rerank(collection, query, ids, passages, top_k, fields)
        return convert.rerank_from_proto(await self._call("Rerank", req, timeout), bool(ids), fields)

    async def stats(self, collection: str | None = None, *, timeout: float | None = None) -> ServerStats:
        if self._engine is not None:
            return await self._local(self._engine.stats, collection)
        resp = await self._call("Stats", pb.StatsRequest(collection=collection or ""), timeout)
        return convert.stats_from_proto(resp)
