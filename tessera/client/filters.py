"""Metadata filters: a small typed tree, a dict shorthand for it, and its validation.

Shorthand (``parse_filter``)::

    {"year": 2020}                          equality (type-aware: "2020" does not equal 2020)
    {"lang": {"$in": ["en", "fr"]}}         one of
    {"year": {"$gte": 2000, "$lt": 2010}}   numeric range ($gt, $gte, $lt, $lte)
    {"$and": [f1, f2]}, {"$or": [f1, f2]}   combinations; several keys in one dict are ANDed
    {"source.venue": "ACL"}                 dotted paths reach into nested objects

Documents lacking a field never match a condition on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.client.errors import InvalidArgument

Scalar = str | int | float | bool

MAX_DEPTH = 16
MAX_NODES = 256
MAX_VALUES = 1000
_FIELD = re.compile(r"^[\w\-:@]+(\.[\w\-:@]+)*$")


@dataclass(frozen=True)
class Eq:
    field: str
    value: Scalar


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    field: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class And:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    filters: tuple[Filter, ...]


Filter = Eq | In | Range | And | Or
_RANGE_OPS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}


def parse_filter(spec: Filter | Mapping | None, where: str = "filter") -> Filter | None:
    """A validated filter tree from a tree or the dict shorthand (None stays None)."""
    if spec is None:
        return None
    tree = spec if isinstance(spec, (Eq, In, Range, And, Or)) else _from_dict(spec, where)
    return validate_filter(tree, where)


def _from_dict(spec, where: str) -> Filter:
    if not isinstance(spec, Mapping) or not spec:
        raise InvalidArgument("a filter must be a non-empty object", field=where)
    parts: list[Filter] = []
    for key, value in spec.items():
        at = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise InvalidArgument(f"{key} needs a non-empty list of filters", field=at)
            subs = tuple(_from_dict(v, f"{at}[{i}]") for i, v in enumerate(value))
            parts.append(And(subs) if key == "$and" else Or(subs))
        elif not isinstance(key, str) or key.startswith("$"):
            raise InvalidArgument(f"unknown operator {key!r} (known: $and, $or)", field=where)
        elif isinstance(value, Mapping):
            if not value:
                raise InvalidArgument("empty condition", field=at)
            bounds = {}
            for op, arg in value.items():
                if op == "$eq":
                    parts.append(Eq(key, arg))
                elif op == "$in":
                    if not isinstance(arg, (list, tuple)):
                        raise InvalidArgument("$in needs a list of values", field=f"{at}.$in")
                    parts.append(In(key, tuple(arg)))
                elif op in _RANGE_OPS:
                    bounds[_RANGE_OPS[op]] = arg
                else:
                    raise InvalidArgument(
                        f"unknown operator {op!r} (known: $eq, $in, $gt, $gte, $lt, $lte)", field=at
                    )
            if bounds:
                parts.append(Range(key, **bounds))
        else:
            parts.append(Eq(key, value))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _check_scalar(value, where: str) -> Scalar:
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidArgument(f"value must be finite, got {value!r}", field=where)
        return value
    raise InvalidArgument(
        f"value must be a string, number or boolean, got {type(value).__name__}", field=where
    )


def _check_field(name, where: str) -> str:
    if not isinstance(name, str) or not _FIELD.match(name) or len(name) > 256:
        raise InvalidArgument(
            f"invalid field name {name!r}: use letters, digits, '_', '-', ':', '@', and '.' for nesting",
            field=f"{where}.field",
        )
    return name


def validate_filter(tree: Filter, where: str = "filter") -> Filter:
    """Check names, value types, bounds, sizes; raise InvalidArgument naming the offending part."""
    count = [0]

    def walk(node, at: str, depth: int) -> None:
        count[0] += 1
        if count[0] > MAX_NODES:
            raise InvalidArgument(f"filter has more than {MAX_NODES} conditions", field=where)
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"filter is nested more than {MAX_DEPTH} levels deep", field=at)
        if isinstance(node, Eq):
            _check_field(node.field, f"{at}.eq")
            _check_scalar(node.value, f"{at}.eq.value")
        elif isinstance(node, In):
            _check_field(node.field, f"{at}.in_values")
            if not node.values:
                raise InvalidArgument("needs at least one value", field=f"{at}.in_values.values")
            if len(node.values) > MAX_VALUES:
                raise InvalidArgument(f"at most {MAX_VALUES} values", field=f"{at}.in_values.values")
            for i, v in enumerate(node.values):
                _check_scalar(v, f"{at}.in_values.values[{i}]")
        elif isinstance(node, Range):
            _check_field(node.field, f"{at}.range")
            bounds = {"gt": node.gt, "gte": node.gte, "lt": node.lt, "lte": node.lte}
            if all(v is None for v in bounds.values()):
                raise InvalidArgument("a range needs at least one of gt, gte, lt, lte", field=f"{at}.range")
            for name, v in bounds.items():
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise InvalidArgument(f"must be a finite number, got {v!r}", field=f"{at}.range.{name}")
        elif isinstance(node, (And, Or)):
            kind = "all_of" if isinstance(node, And) else "any_of"
            if not node.filters:
                raise InvalidArgument("needs at least one filter", field=f"{at}.{kind}")
            for i, sub in enumerate(node.filters):
                walk(sub, f"{at}.{kind}[{i}]", depth + 1)
        else:
            raise InvalidArgument(f"not a filter: {type(node).__name__}", field=at)

    walk(tree, where, 1)
    return tree
