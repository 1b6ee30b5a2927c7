"""Compile metadata filter trees (``tessera.client.filters``) to SQL on the documents' JSON column.

SQLite: ``json_type``/``json_extract`` with a quoted JSON path. PostgreSQL: JSONB paths, where ``=``
is type-aware and numeric equality ignores the representation (2020 = 2020.0). In both, a document
lacking the field, or holding a value of another type, does not match.
"""

from __future__ import annotations

import json

from sqlalchemy import Float, and_, bindparam, case, cast, false, func, literal, or_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from tessera.client.filters import And, Eq, Filter, In, Or, Range

_NUMBER_TYPES = ("integer", "real")


def _keys(field: str) -> list[str]:
    return field.split(".")


class _SQLite:
    def __init__(self, column) -> None:
        self.col = column

    def _path(self, field: str):
        return literal("$" + "".join('."' + k + '"' for k in _keys(field)))

    def _type(self, field: str):
        return func.json_type(self.col, self._path(field))

    def _value(self, field: str):
        return func.json_extract(self.col, self._path(field))

    def eq(self, field: str, value) -> ColumnElement:
        t = self._type(field)
        if isinstance(value, bool):
            return t == ("true" if value else "false")
        if isinstance(value, str):
            return and_(t == "text", self._value(field) == bindparam(None, value))
        return and_(t.in_(_NUMBER_TYPES), self._value(field) == bindparam(None, float(value)))

    def in_(self, field: str, values) -> ColumnElement:
        return or_(*[self.eq(field, v) for v in values])

    def number(self, field: str):
        return case((self._type(field).in_(_NUMBER_TYPES), self._value(field)), else_=None)


class _Postgres:
    def __init__(self, column) -> None:
        self.col = column

    def _json(self, field: str):
        return func.jsonb_extract_path(self.col, *[literal(k) for k in _keys(field)])

    def eq(self, field: str, value) -> ColumnElement:
        return self._json(field) == cast(bindparam(None, json.dumps(value)), JSONB)

    def in_(self, field: str, values) -> ColumnElement:
        return self._json(field).in_([cast(bindparam(None, json.dumps(v)), JSONB) for v in values])

    def number(self, field: str):
        node = self._json(field)
        text = func.jsonb_extract_path_text(self.col, *[literal(k) for k in _keys(field)])
        return case((func.jsonb_typeof(node) == "number", cast(text, Float)), else_=None)


def compile_filter(tree: Filter, column, dialect: str) -> ColumnElement:
    """A boolean SQL expression over ``column`` (the metadata JSON) for a validated filter tree."""
    if dialect == "sqlite":
        d = _SQLite(column)
    elif dialect == "postgresql":
        d = _Postgres(column)
    else:  # pragma: no cover - guarded by the store
        raise ValueError(f"metadata filters are not supported on {dialect}")

    def walk(node: Filter) -> ColumnElement:
        if isinstance(node, Eq):
            return d.eq(node.field, node.value)
        if isinstance(node, In):
            return d.in_(node.field, node.values) if node.values else false()
        if isinstance(node, Range):
            x = d.number(node.field)
            conds = [x.is_not(None)]
            if node.gt is not None:
                conds.append(x > float(node.gt))
            if node.gte is not None:
                conds.append(x >= float(node.gte))
            if node.lt is not None:
                conds.append(x < float(node.lt))
            if node.lte is not None:
                conds.append(x <= float(node.lte))
            return and_(*conds)
        if isinstance(node, And):
            return and_(*[walk(f) for f in node.filters])
        if isinstance(node, Or):
            return or_(*[walk(f) for f in node.filters])
        raise TypeError(f"not a filter node: {node!r}")

    return walk(tree)
