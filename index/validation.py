"""Checks on user input; each failure is a ValueError whose message names the problem."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from tessera.packed import PackedDocuments


def check_queries(queries, dim: int) -> torch.Tensor:
    """[nq, Lq, dim] float32 from a [nq, Lq, dim] or [Lq, dim] tensor (or array)."""
    q = torch.as_tensor(queries)
    if q.ndim == 2:
        q = q[None]
    if q.ndim != 3:
        raise ValueError(f"queries must be [n, tokens, dim] or [tokens, dim], got shape {tuple(q.shape)}")
    if q.shape[-1] != dim:
        raise ValueError(f"query vectors have dimension {q.shape[-1]} but the index has dimension {dim}")
    if q.shape[1] == 0:
        raise ValueError("queries have no token vectors")
    if not q.is_floating_point():
        raise ValueError(f"query vectors must be floating point, got {q.dtype}")
    q = q.float()
    finite = np.isfinite(q.detach().numpy()).all() if q.device.type == "cpu" else torch.isfinite(q).all()
    if not finite:
        raise ValueError("query vectors contain NaN or infinite values")
    return q.contiguous()


def check_k(k, max_k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if k > max_k:
        raise ValueError(f"k={k} is larger than the maximum of {max_k} results per query")
    return k


def check_ids(ids: Sequence[str], what: str = "ids") -> list[str]:
    if isinstance(ids, str):
        raise ValueError(f"{what} must be a sequence of strings, not a single string")
    out = list(ids)
    for x in out:
        if not isinstance(x, str) or not x:
            raise ValueError(f"{what} must be non-empty strings, got {x!r}")
    return out


def check_documents(ids: Sequence[str], docs: PackedDocuments, dim: int) -> list[str]:
    ids = check_ids(ids, "document ids")
    if not isinstance(docs, PackedDocuments):
        raise ValueError(f"documents must be PackedDocuments, got {type(docs).__name__}")
    if len(ids) != len(docs):
        raise ValueError(f"{len(ids)} ids given for {len(docs)} documents")
    if len(set(ids)) != len(ids):
        dup = next(x for i, x in enumerate(ids) if x in ids[:i])
        raise ValueError(f"document id {dup!r} appears more than once in one add() call")
    if docs.dim != dim:
        raise ValueError(f"document vectors have dimension {docs.dim} but the index has dimension {dim}")
    if not docs.vectors.is_floating_point():
        raise ValueError(f"document vectors must be floating point, got {docs.vectors.dtype}")
    if (docs.lengths < 0).any():
        raise ValueError("document lengths must not be negative")
    bad = ~torch.isfinite(docs.vectors).all(dim=1)
    if bad.any():
        pos = int(bad.nonzero()[0])
        doc = int(torch.searchsorted(docs.offsets, torch.tensor([pos]), right=True)[0]) - 1
        raise ValueError(f"document {ids[doc]!r} has NaN or infinite vector values")
    return ids


def _number(value, integer: bool) -> bool:
    """A finite int (``integer``) or int/float; bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return math.isfinite(value)


def check_params(method: str, params: dict | None, spec: dict) -> dict:
    """Validate method parameters against {name: type or (int, minimum)}; ints must be positive unless a
    minimum is given, floats finite."""
    params = dict(params or {})
    for name, value in params.items():
        if name not in spec:
            known = ", ".join(sorted(spec)) or "none"
            raise ValueError(f"unknown parameter {name!r} for method {method!r} (known: {known})")
        want, minimum = spec[name] if isinstance(spec[name], tuple) else (spec[name], 1)
        if want is float:
            ok = _number(value, integer=False)
            kind = "a finite number"
        elif want is int:
            ok = _number(value, integer=True) and value >= minimum
            kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        else:
            ok = isinstance(value, want)
            kind = f"a {want.__name__}"
        if not ok:
            raise ValueError(f"parameter {name!r} of method {method!r} must be {kind}, got {value!r}")
    return params


def check_settings(settings: dict, rules: dict) -> dict:
    """Validate index settings against {name: bool, a tuple of choices, or (int or float, minimum[,
    maximum or None[, None allowed]])}: numbers finite and in range, ints whole. Unknown names are
    refused."""
    unknown = set(settings) - set(rules)
    if unknown:
        raise ValueError(
            f"unknown index settings: {', '.join(sorted(unknown))} (known: {', '.join(sorted(rules))})"
        )
    for name, value in settings.items():
        rule = rules[name]
        if rule is bool:
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(rule[0], str):  # choices
            ok, kind = value in rule, f"one of {', '.join(rule)}"
        else:
            want, minimum, maximum, nullable = (*rule, None, False)[:4]
            if value is None and nullable:
                continue
            ok = _number(value, want is int) and minimum <= value <= (math.inf if maximum is None else maximum)
            kind = f"{'an integer' if want is int else 'a number'} " + (
                f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            )
            kind += " or null" if nullable else ""
        if not ok:
            raise ValueError(f"index setting {name} must be {kind}, got {value!r}")
    return dict(settings)
