"""Request builders shared by the sync and async clients (plain Python in, protobuf out)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice

from tessera.client import convert
from tessera.client.filters import Filter, parse_filter
from tessera.client.types import Document
from tessera.proto.tessera.v1 import tessera_pb2 as pb


def create_collection(
    name, model, nbits, default_method, index_settings, if_not_exists
) -> pb.CreateCollectionRequest:
    req = pb.CreateCollectionRequest(name=name, model=model, if_not_exists=if_not_exists)
    req.settings.nbits = nbits
    req.settings.default_method = default_method or ""
    convert.params_to_proto(index_settings, req.settings.index)
    return req


def upsert(collection: str, documents: Iterable) -> pb.UpsertRequest:
    req = pb.UpsertRequest(collection=collection)
    for d in documents:
        convert.document_to_proto(Document.coerce(d), req.documents.add())
    return req


def delete(collection: str, ids: Sequence[str] | None, filter: Filter | Mapping | None) -> pb.DeleteRequest:
    req = pb.DeleteRequest(collection=collection, ids=list(ids or []))
    tree = parse_filter(filter)
    if tree is not None:
        convert.filter_to_proto(tree, req.filter)
    return req


def options(
    k: int, method: str | None, params: Mapping | None, filter, fields: Sequence[str]
) -> pb.SearchOptions:
    opts = pb.SearchOptions(k=k, method=method or "", fields=list(fields or []))
    convert.params_to_proto(params, opts.params)
    tree = parse_filter(filter, "options.filter")
    if tree is not None:
        convert.filter_to_proto(tree, opts.filter)
    return opts


def search(collection, query, k, method, params, filter, fields) -> pb.SearchRequest:
    req = pb.SearchRequest(collection=collection, options=options(k, method, params, filter, fields))
    if query is not None:
        convert.query_to_proto(query, req.query)
    return req


def batch_search(collection, queries, k, method, params, filter, fields) -> pb.BatchSearchRequest:
    req = pb.BatchSearchRequest(collection=collection, options=options(k, method, params, filter, fields))
    for q in queries:
        convert.query_to_proto(q, req.queries.add())
    return req


def rerank(collection, query, ids, passages, top_k, fields) -> pb.RerankRequest:
    req = pb.RerankRequest(
        collection=collection,
        ids=list(ids or []),
        passages=list(passages or []),
        top_k=top_k,
        fields=list(fields or []),
    )
    if query is not None:
        convert.query_to_proto(query, req.query)
    return req


def chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while True:
        chunk = list(islice(it, size))
        if not chunk:
            return
        yield chunk
