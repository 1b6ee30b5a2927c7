"""The gRPC servicer: converts requests, runs the engine off the event loop, converts results.

Validation that needs the protobuf form (oneofs, vector shapes) happens here; the rest is the
engine's. Field names in error messages are those of the request messages.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

from tessera.client import convert
from tessera.client.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from tessera.proto.tessera.v1 import tessera_pb2 as pb
from tessera.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from tessera.service.engine import Engine

_OPTION_FIELDS = ("k", "method", "params", "filter", "fields")
MIN_QUEUE_S = 0.005  # a wait shorter than this is thread hand-off, not overload: never refused for it


def _rename(exc: InvalidArgument, prefix_options: bool = False, prefix: str = "") -> InvalidArgument:
    """Re-point an engine field name at the request message's field."""
    field = exc.field
    if field and prefix_options and field.split(".")[0].split("[")[0] in _OPTION_FIELDS:
        field = f"options.{field}"
    if field and prefix:
        field = f"{prefix}{field}"
    return InvalidArgument(exc.message, field=field)


class TesseraServicer(pb_grpc.TesseraServicer):
    def __init__(self, engine: Engine, executor: Executor, max_queue_s: float | None = None) -> None:
        self.engine = engine
        self.executor = executor
        self.max_queue_s = max_queue_s or None  # None/0: only the deadline bounds the wait for a worker

    async def _run(self, context, fn, *args, **kwargs):
        """Run an engine call on a worker thread. A call still waiting for a worker after its queue budget
        (``max_queue_s``, and at most half of the deadline it had left on arrival, never under
        ``MIN_QUEUE_S``) is answered RESOURCE_EXHAUSTED without being run: past capacity the server sheds
        load while the client still listens, instead of working on calls whose clients have timed out. A
        call whose deadline passed while it waited is answered DEADLINE_EXCEEDED, also without being run."""
        budget = self.max_queue_s
        remaining = context.time_remaining()
        if remaining is not None:
            budget = remaining / 2 if budget is None else min(budget, remaining / 2)
        if budget is not None:
            budget = max(budget, MIN_QUEUE_S)
        queued = time.monotonic()

        def call():
            waited = time.monotonic() - queued
            left = context.time_remaining()
            if left is not None and left <= 0:
                raise DeadlineExceeded(
                    f"the deadline passed after the call waited {waited * 1000:.0f} ms for a worker thread; not run"
                )
            if budget is not None and waited > budget:
                raise ResourceExhausted(
                    f"server overloaded: the call waited {waited * 1000:.0f} ms for a worker thread "
                    f"(queue budget {budget * 1000:.0f} ms); retry later"
                )
            return fn(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    # -- collections ------------------------------------------------------------------------------
    async def CreateCollection(self, request: pb.CreateCollectionRequest, context) -> pb.Collection:
        s = request.settings
        info = await self._run(
            context,
            self.engine.create_collection,
            request.name,
            request.model,
            nbits=s.nbits,
            default_method=s.default_method,
            index_settings=convert.params_from_proto(s.index, "settings.index"),
            if_not_exists=request.if_not_exists,
        )
        return convert.collection_to_proto(info)

    async def ListCollections(self, request, context) -> pb.ListCollectionsResponse:
        infos = await self._run(context, self.engine.list_collections)
        out = pb.ListCollectionsResponse()
        for info in infos:
            convert.collection_to_proto(info, out.collections.add())
        return out

    async def DescribeCollection(self, request: pb.DescribeCollectionRequest, context) -> pb.Collection:
        return convert.collection_to_proto(await self._run(context, self.engine.describe_collection, request.name))

    async def DropCollection(self, request: pb.DropCollectionRequest, context) -> pb.DropCollectionResponse:
        dropped = await self._run(context, self.engine.drop_collection, request.name, if_exists=request.if_exists)
        return pb.DropCollectionResponse(dropped=dropped)

    # -- documents --------------------------------------------------------------------------------
    async def Upsert(self, request: pb.UpsertRequest, context) -> pb.UpsertResponse:
        docs = [convert.document_from_proto(d) for d in request.documents]
        return convert.upsert_to_proto(await self._run(context, self.engine.upsert, request.collection, docs))

    async def BulkUpsert(self, request_iterator, context) -> pb.UpsertResponse:
        total = None
        collection = None
        i = -1
        async for request in request_iterator:
            i += 1
            name = request.collection or collection
            if collection is not None and name != collection:
                raise InvalidArgument(
                    f"every message of one stream must name the same collection ({collection!r})",
                    field=f"message[{i}].collection",
                )
            collection = name
            docs = [convert.document_from_proto(d) for d in request.documents]
            try:
                result = await self._run(context, self.engine.upsert, collection, docs)
            except InvalidArgument as exc:
                raise _rename(exc, prefix=f"message[{i}].") from None
            total = result if total is None else total + result
        if collection is None:
            raise InvalidArgument("the stream held no messages", field="message")
        return convert.upsert_to_proto(total)

    async def Delete(self, request: pb.DeleteRequest, context) -> pb.DeleteResponse:
        tree = convert.filter_from_proto(request.filter) if request.HasField("filter") else None
        ids = list(request.ids) or None
        deleted = await self._run(context, self.engine.delete, request.collection, ids=ids, filter=tree)
        return pb.DeleteResponse(deleted=deleted)

    async def Get(self, request: pb.GetRequest, context) -> pb.GetResponse:
        result = await self._run(context, self.engine.get, request.collection, list(request.ids))
        return convert.get_result_to_proto(result)

    # -- retrieval --------------------------------------------------------------------------------
    def _options(self, o: pb.SearchOptions) -> dict:
        try:
            return {
                "k": o.k if o.HasField("k") else 10,
                "method": o.method or None,
                "params": convert.params_from_proto(o.params),
                "filter": convert.filter_from_proto(o.filter) if o.HasField("filter") else None,
                "fields": list(o.fields),
            }
        except InvalidArgument as exc:
            raise _rename(exc, prefix_options=True) from None

    async def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        start = time.perf_counter()
        query = convert.query_from_proto(request.query, "query")
        if query is None:
            raise InvalidArgument("is required: set query.text or query.vectors", field="query")
        opts = self._options(request.options)
        try:
            result = await self._run(
                context, self.engine.search, request.collection, query, timeout=context.time_remaining(), **opts
            )
        except InvalidArgument as exc:
            raise _rename(exc, prefix_options=True) from None
        out = pb.SearchResponse(took_ms=(time.perf_counter() - start) * 1000)
        convert.search_result_to_proto(result, out.result)
        return out

    async def BatchSearch(self, request: pb.BatchSearchRequest, context) -> pb.BatchSearchResponse:
        start = time.perf_counter()
        queries = []
        for i, q in enumerate(request.queries):
            value = convert.query_from_proto(q, f"queries[{i}]")
            if value is None:
                raise InvalidArgument("is required: set text or vectors", field=f"queries[{i}]")
            queries.append(value)
        opts = self._options(request.options)
        try:
            results = await self._run(
                context,
                self.engine.batch_search,
                request.collection,
                queries,
                timeout=context.time_remaining(),
                **opts,
            )
        except InvalidArgument as exc:
            raise _rename(exc, prefix_options=True) from None
        out = pb.BatchSearchResponse(took_ms=(time.perf_counter() - start) * 1000)
        for r in results:
            convert.search_result_to_proto(r, out.results.add())
        return out

    async def Rerank(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        start = time.perf_counter()
        query = convert.query_from_proto(request.query, "query")
        hits = await self._run(
            context,
            self.engine.rerank,
            request.collection,
            query,
            ids=list(request.ids) or None,
            passages=list(request.passages) or None,
            top_k=request.top_k,
            fields=list(request.fields),
            timeout=context.time_remaining(),
        )
        return convert.rerank_to_proto(hits, (time.perf_counter() - start) * 1000)

    async def Stats(self, request: pb.StatsRequest, context) -> pb.StatsResponse:
        return convert.stats_to_proto(await self._run(context, self.engine.stats, request.collection or None))
