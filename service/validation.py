"""Checks on request values; each failure is an InvalidArgument naming the field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from tessera.client.errors import InvalidArgument
from tessera.client.types import Document
from tessera.service.limits import Limits

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
FIELDS = ("text", "metadata")


def utf8_size(value: str, field: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument("is not valid UTF-8 (it holds a lone surrogate)", field=field) from None


def collection_name(name, field: str = "name") -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise InvalidArgument(
            f"invalid collection name {name!r}: 1-64 letters, digits, '_', '-', '.', "
            "starting with a letter or digit",
            field=field,
        )
    return name


def k_value(k, limits: Limits, field: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidArgument(f"must be an integer, got {k!r}", field=field)
    if k <= 0:
        raise InvalidArgument(f"must be positive, got {k}", field=field)
    if k > limits.max_k:
        raise InvalidArgument(f"{k} is larger than the maximum of {limits.max_k}", field=field)
    return int(k)


def fields_list(fields, field: str = "fields") -> tuple[str, ...]:
    if fields is None:
        return ()
    if isinstance(fields, str):
        fields = [fields]
    out = []
    for i, f in enumerate(fields):
        if f not in FIELDS:
            raise InvalidArgument(f"unknown field {f!r} (known: {', '.join(FIELDS)})", field=f"{field}[{i}]")
        if f not in out:
            out.append(f)
    return tuple(out)


def params_dict(params, field: str = "params") -> dict:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidArgument("must be a mapping of parameter names to values", field=field)
    out = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"parameter names must be non-empty strings, got {name!r}", field=field)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"must be finite, got {value!r}", field=f"{field}.{name}")
        if not isinstance(value, (bool, int, float, str)):
            raise InvalidArgument(
                f"must be a number, string or boolean, got {type(value).__name__}", field=f"{field}.{name}"
            )
        out[name] = value
    return out


def id_list(ids, limits: Limits, field: str = "ids", *, allow_empty: bool = False) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidArgument("must be a list of document ids", field=field)
    ids = list(ids)
    if not ids and not allow_empty:
        raise InvalidArgument("needs at least one id", field=field)
    if len(ids) > limits.max_ids:
        raise InvalidArgument(f"{len(ids)} ids is more than the maximum of {limits.max_ids}", field=field)
    seen: dict[str, int] = {}
    for i, doc_id in enumerate(ids):
        document_id(doc_id, limits, f"{field}[{i}]")
        if doc_id in seen:
            raise InvalidArgument(
                f"duplicate id {doc_id!r} (also at {field}[{seen[doc_id]}])", field=f"{field}[{i}]"
            )
        seen[doc_id] = i
    return ids


def document_id(doc_id, limits: Limits, field: str) -> str:
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidArgument(f"must be a non-empty string, got {doc_id!r}", field=field)
    if utf8_size(doc_id, field) > limits.max_id_bytes:
        raise InvalidArgument(f"is longer than {limits.max_id_bytes} bytes", field=field)
    return doc_id


def metadata_object(meta, limits: Limits, field: str) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InvalidArgument(f"must be a JSON object, got {type(meta).__name__}", field=field)
    try:
        text = json.dumps(meta, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"must be JSON (objects, arrays, strings, finite numbers): {exc}", field=field
        ) from None
    if utf8_size(text, field) > limits.max_metadata_bytes:
        raise InvalidArgument(f"is larger than {limits.max_metadata_bytes} bytes as JSON", field=field)
    return json.loads(text)  # a plain copy: dicts, lists, str, int/float, bool, None


def documents(docs, limits: Limits, field: str = "documents") -> list[Document]:
    docs = list(docs)
    if len(docs) > limits.max_batch_documents:
        raise InvalidArgument(
            f"batch of {len(docs)} documents is larger than the maximum of {limits.max_batch_documents}",
            field=field,
        )
    out: list[Document] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(docs):
        at = f"{field}[{i}]"
        try:
            doc = Document.coerce(raw)
        except (TypeError, KeyError) as exc:
            raise InvalidArgument(f"not a document: {exc}", field=at) from None
        document_id(doc.id, limits, f"{at}.id")
        if doc.id in seen:
            raise InvalidArgument(
                f"duplicate id {doc.id!r} (also at {field}[{seen[doc.id]}])", field=f"{at}.id"
            )
        seen[doc.id] = i
        if not isinstance(doc.text, str) or not doc.text.strip():
            raise InvalidArgument("must be a non-empty string", field=f"{at}.text")
        if utf8_size(doc.text, f"{at}.text") > limits.max_text_bytes:
            raise InvalidArgument(f"is longer than {limits.max_text_bytes} bytes", field=f"{at}.text")
        out.append(Document(doc.id, doc.text, metadata_object(doc.metadata, limits, f"{at}.metadata")))
    return out


def query_value(query, dim: int, limits: Limits, field: str = "query") -> str | torch.Tensor:
    """A query text, or precomputed vectors as a [tokens, dim] float32 tensor."""
    if isinstance(query, str):
        if not query.strip():
            raise InvalidArgument("must not be empty", field=field)
        if utf8_size(query, field) > limits.max_query_bytes:
            raise InvalidArgument(f"is longer than {limits.max_query_bytes} bytes", field=field)
        return query
    if query is None:
        raise InvalidArgument("is required (text or vectors)", field=field)
    try:
        q = torch.as_tensor(
            np.asarray(query, dtype=np.float32) if not isinstance(query, torch.Tensor) else query
        )
    except (TypeError, ValueError):
        raise InvalidArgument("must be a text or a [tokens, dim] array of numbers", field=field) from None
    if q.ndim != 2 or q.shape[0] == 0:
        raise InvalidArgument(
            f"vectors must be [tokens, dim] with tokens >= 1, got shape {tuple(q.shape)}", field=field
        )
    if q.shape[1] != dim:
        raise InvalidArgument(
            f"vectors have dimension {q.shape[1]} but the collection has {dim}", field=field
        )
    if q.shape[0] > limits.max_query_tokens:
        raise InvalidArgument(
            f"{q.shape[0]} query vectors is more than {limits.max_query_tokens}", field=field
        )
    q = q.float()
    if not torch.isfinite(q).all():
        raise InvalidArgument("vectors contain NaN or infinite values", field=field)
    return q.contiguous()
