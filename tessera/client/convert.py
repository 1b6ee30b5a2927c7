"""Conversions between protobuf messages (tessera.v1) and the client's plain types, both directions.

Used by the client (requests out, results in) and by the server (requests in, results out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from google.protobuf import struct_pb2, timestamp_pb2

from tessera.client.errors import InvalidArgument
from tessera.client.filters import And, Eq, Filter, In, Or, Range
from tessera.client.types import (
    CollectionInfo,
    CollectionStats,
    Document,
    GetResult,
    IndexSegment,
    RerankHit,
    SearchHit,
    SearchResult,
    ServerStats,
    StoredDocument,
    UpsertResult,
)
from tessera.proto.tessera.v1 import tessera_pb2 as pb

_SAFE_INT = 2**53


# -- JSON values ------------------------------------------------------------------------------------
def _plain(value):
    """Struct numbers are doubles: give integral ones back as ints (JSON does not tell them apart)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _value(v: struct_pb2.Value):
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return {k: _value(x) for k, x in v.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    if kind == "number_value":
        return _plain(v.number_value)
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    return None


def struct_to_dict(s: struct_pb2.Struct) -> dict:
    return {k: _value(v) for k, v in s.fields.items()}


def dict_to_struct(d: Mapping | None, out: struct_pb2.Struct | None = None) -> struct_pb2.Struct:
    out = out if out is not None else struct_pb2.Struct()
    if d:
        out.update(d)
    return out


def ts_to_datetime(t: timestamp_pb2.Timestamp) -> datetime | None:
    if not t.seconds and not t.nanos:
        return None
    return t.ToDatetime(tzinfo=timezone.utc)


def datetime_to_ts(d: datetime | None, out: timestamp_pb2.Timestamp) -> None:
    if d is not None:
        out.FromDatetime(d if d.tzinfo else d.replace(tzinfo=timezone.utc))


# -- parameters -------------------------------------------------------------------------------------
def params_to_proto(params: Mapping | None, target) -> None:
    """Fill a map<string, ParamValue> field from a dict of int/float/str/bool."""
    for name, value in (params or {}).items():
        pv = target[name]
        if isinstance(value, bool):
            pv.bool_value = value
        elif isinstance(value, int):
            pv.int_value = value
        elif isinstance(value, float):
            pv.float_value = value
        elif isinstance(value, str):
            pv.string_value = value
        else:
            raise InvalidArgument(
                f"must be a number, string or boolean, got {type(value).__name__}", field=name
            )


def params_from_proto(source, where: str = "params") -> dict:
    out = {}
    for name, pv in source.items():
        kind = pv.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument("parameter has no value", field=f"{where}.{name}")
        out[name] = getattr(pv, kind)
    return out


# -- filters ----------------------------------------------------------------------------------------
def _scalar_to_proto(value, out: pb.Scalar) -> None:
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, (int, float)):
        out.number_value = float(value)
    elif isinstance(value, str):
        out.string_value = value
    else:
        raise InvalidArgument(
            f"filter values must be strings, numbers or booleans, got {value!r}", field="filter"
        )


def _scalar_from_proto(s: pb.Scalar, where: str):
    kind = s.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("value is not set", field=where)
    return _plain(getattr(s, kind)) if kind == "number_value" else getattr(s, kind)


def filter_to_proto(tree: Filter, out: pb.Filter | None = None) -> pb.Filter:
    out = out if out is not None else pb.Filter()
    if isinstance(tree, Eq):
        out.eq.field = tree.field
        _scalar_to_proto(tree.value, out.eq.value)
    elif isinstance(tree, In):
        out.in_values.field = tree.field
        for v in tree.values:
            _scalar_to_proto(v, out.in_values.values.add())
    elif isinstance(tree, Range):
        out.range.field = tree.field
        for name in ("gt", "gte", "lt", "lte"):
            if getattr(tree, name) is not None:
                setattr(out.range, name, float(getattr(tree, name)))
    elif isinstance(tree, (And, Or)):
        target = out.all_of if isinstance(tree, And) else out.any_of
        target.SetInParent()
        for sub in tree.filters:
            filter_to_proto(sub, target.filters.add())
    else:
        raise InvalidArgument(f"not a filter: {tree!r}", field="filter")
    return out


def filter_from_proto(f: pb.Filter, where: str = "filter") -> Filter:
    kind = f.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("empty filter: set one of eq, in_values, range, all_of, any_of", field=where)
    if kind == "eq":
        return Eq(f.eq.field, _scalar_from_proto(f.eq.value, f"{where}.eq.value"))
    if kind == "in_values":
        vals = tuple(
            _scalar_from_proto(v, f"{where}.in_values.values[{i}]") for i, v in enumerate(f.in_values.values)
        )
        return In(f.in_values.field, vals)
    if kind == "range":
        r = f.range
        return Range(
            r.field,
            r.gt if r.HasField("gt") else None,
            r.gte if r.HasField("gte") else None,
            r.lt if r.HasField("lt") else None,
            r.lte if r.HasField("lte") else None,
        )
    subs = getattr(f, kind).filters
    tree = tuple(filter_from_proto(s, f"{where}.{kind}[{i}]") for i, s in enumerate(subs))
    return And(tree) if kind == "all_of" else Or(tree)


# -- queries ----------------------------------------------------------------------------------------
def query_to_proto(query, out: pb.Query | None = None) -> pb.Query:
    out = out if out is not None else pb.Query()
    if isinstance(query, str):
        out.text = query
        return out
    import numpy as np

    arr = np.asarray(query.detach().cpu().numpy() if hasattr(query, "detach") else query, dtype=np.float32)
    if arr.ndim != 2:
        raise InvalidArgument(f"query vectors must be [tokens, dim], got shape {arr.shape}", field="query")
    out.vectors.tokens, out.vectors.dim = arr.shape
    out.vectors.values.extend(arr.reshape(-1).tolist())
    return out


def query_from_proto(q: pb.Query, where: str = "query"):
    """A text, a [tokens, dim] float32 tensor, or None when unset."""
    kind = q.WhichOneof("kind")
    if kind == "text":
        return q.text
    if kind == "vectors":
        import numpy as np
        import torch

        v = q.vectors
        if v.tokens == 0 or v.dim == 0:
            raise InvalidArgument("vectors need tokens >= 1 and dim >= 1", field=f"{where}.vectors")
        if len(v.values) != v.tokens * v.dim:
            raise InvalidArgument(
                f"{len(v.values)} values do not make {v.tokens} x {v.dim} vectors",
                field=f"{where}.vectors.values",
            )
        arr = np.asarray(v.values, dtype=np.float32).reshape(v.tokens, v.dim)
        if not np.isfinite(arr).all():
            raise InvalidArgument("vectors contain NaN or infinite values", field=f"{where}.vectors.values")
        return torch.from_numpy(arr)
    return None


# -- documents --------------------------------------------------------------------------------------
def document_to_proto(doc: Document, out: pb.Document) -> pb.Document:
    out.id = doc.id
    out.text = doc.text
    dict_to_struct(doc.metadata, out.metadata)
    return out


def document_from_proto(d: pb.Document) -> Document:
    return Document(d.id, d.text, struct_to_dict(d.metadata))


def stored_to_proto(doc: StoredDocument, out: pb.StoredDocument) -> None:
    out.id, out.text, out.content_hash, out.status = doc.id, doc.text, doc.content_hash, doc.status
    dict_to_struct(doc.metadata, out.metadata)
    datetime_to_ts(doc.created_at, out.created_at)
    datetime_to_ts(doc.updated_at, out.updated_at)


def stored_from_proto(d: pb.StoredDocument) -> StoredDocument:
    return StoredDocument(
        d.id,
        d.text,
        struct_to_dict(d.metadata),
        d.content_hash,
        d.status,
        ts_to_datetime(d.created_at),
        ts_to_datetime(d.updated_at),
    )


def get_result_to_proto(r: GetResult) -> pb.GetResponse:
    out = pb.GetResponse(missing_ids=r.missing_ids)
    for d in r.documents:
        stored_to_proto(d, out.documents.add())
    return out


def get_result_from_proto(r: pb.GetResponse) -> GetResult:
    return GetResult([stored_from_proto(d) for d in r.documents], list(r.missing_ids))


def upsert_to_proto(r: UpsertResult) -> pb.UpsertResponse:
    return pb.UpsertResponse(inserted=r.inserted, updated=r.updated, unchanged=r.unchanged)


def upsert_from_proto(r: pb.UpsertResponse) -> UpsertResult:
    return UpsertResult(r.inserted, r.updated, r.unchanged)


# -- collections ------------------------------------------------------------------------------------
def collection_to_proto(c: CollectionInfo, out: pb.Collection | None = None) -> pb.Collection:
    out = out if out is not None else pb.Collection()
    out.name, out.model, out.dim = c.name, c.model, c.dim
    out.settings.nbits = c.nbits
    out.settings.default_method = c.default_method
    params_to_proto(c.index_settings, out.settings.index)
    out.documents, out.pending_documents, out.vectors = c.documents, c.pending_documents, c.vectors
    datetime_to_ts(c.created_at, out.created_at)
    for g in c.segments:
        out.segments.add(name=g.name, documents=g.documents, vectors=g.vectors)
    return out


def collection_from_proto(c: pb.Collection) -> CollectionInfo:
    return CollectionInfo(
        name=c.name,
        model=c.model,
        dim=c.dim,
        nbits=c.settings.nbits,
        default_method=c.settings.default_method,
        index_settings=params_from_proto(c.settings.index),
        documents=c.documents,
        pending_documents=c.pending_documents,
        vectors=c.vectors,
        created_at=ts_to_datetime(c.created_at),
        segments=tuple(IndexSegment(g.name, g.documents, g.vectors) for g in c.segments),
    )


# -- results ----------------------------------------------------------------------------------------
def search_result_to_proto(r: SearchResult, out: pb.SearchResult) -> None:
    for h in r.hits:
        hit = out.hits.add(id=h.id, score=h.score)
        if h.text is not None:
            hit.text = h.text
        if h.metadata is not None:
            dict_to_struct(h.metadata, hit.metadata)


def search_result_from_proto(r: pb.SearchResult, took_ms: float, fields: Sequence[str]) -> SearchResult:
    want_text, want_meta = "text" in fields, "metadata" in fields
    return SearchResult(
        [
            SearchHit(
                h.id,
                float(h.score),
                h.text if want_text else None,
                struct_to_dict(h.metadata) if want_meta else None,
            )
            for h in r.hits
        ],
        took_ms,
    )


def rerank_to_proto(hits: Sequence[RerankHit], took_ms: float) -> pb.RerankResponse:
    out = pb.RerankResponse(took_ms=took_ms)
    for h in hits:
        m = out.hits.add(index=h.index, score=h.score)
        if h.id is not None:
            m.id = h.id
        if h.text is not None:
            m.text = h.text
        if h.metadata is not None:
            dict_to_struct(h.metadata, m.metadata)
    return out


def rerank_from_proto(r: pb.RerankResponse, by_ids: bool, fields: Sequence[str]) -> list[RerankHit]:
    want_text, want_meta = "text" in fields, "metadata" in fields and by_ids
    return [
        RerankHit(
            h.index,
            float(h.score),
            h.id if by_ids else None,
            h.text if want_text else None,
            struct_to_dict(h.metadata) if want_meta else None,
        )
        for h in r.hits
    ]


def stats_to_proto(s: ServerStats) -> pb.StatsResponse:
    out = pb.StatsResponse(uptime_s=s.uptime_s, version=s.version, methods=s.methods)
    for c in s.collections:
        out.collections.add(
            name=c.name,
            documents=c.documents,
            pending_documents=c.pending_documents,
            vectors=c.vectors,
            segments=c.segments,
            bytes_per_vector=c.bytes_per_vector,
            memory_bytes=c.memory_bytes,
            disk_bytes=c.disk_bytes,
        )
    return out


def stats_from_proto(s: pb.StatsResponse) -> ServerStats:
    return ServerStats(
        [
            CollectionStats(
                c.name,
                c.documents,
                c.pending_documents,
                c.vectors,
                c.segments,
                c.bytes_per_vector,
                c.memory_bytes,
                c.disk_bytes,
            )
            for c in s.collections
        ],
        s.uptime_s,
        s.version,
        list(s.methods),
    )
