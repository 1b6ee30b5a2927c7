"""Search methods for multi-vector models, as a small registry.

``exact`` is brute-force MaxSim (``tessera.scoring.maxsim_topk``). Every other method (``plaid``,
``xtr``, ``prf``, ...) comes from ``tessera.index.MultiVectorIndex.search``: the cached document
encodings are loaded into an in-memory index and searched with that method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from tessera.errors import TesseraError
from tessera.packed import PackedDocuments
from tessera.scoring import maxsim_topk

Hits = list[list[tuple[str, float]]]


class MethodError(TesseraError):
    """An unknown or unavailable search method, or bad method parameters."""


@dataclass
class SearchOptions:
    k: int = 1000
    device: str = "cpu"
    params: dict = field(default_factory=dict)  # method parameters (index methods)
    nbits: int = 2  # residual bits per dimension of the in-memory index (index methods)
    info: dict = field(default_factory=dict)  # filled by a method: index build time and size


SearchFn = Callable[[torch.Tensor, PackedDocuments, Sequence[str], SearchOptions], Hits]


def exact(queries: torch.Tensor, docs: PackedDocuments, ids: Sequence[str], opts: SearchOptions) -> Hits:
    """Exact MaxSim over every document."""
    scores, idx = maxsim_topk(queries, docs, opts.k, device=opts.device)
    return [
        [(ids[i], s) for i, s in zip(row_i.tolist(), row_s.tolist(), strict=True)]
        for row_i, row_s in zip(idx, scores, strict=True)
    ]


def index_methods() -> list[str]:
    """Methods that ``tessera.index.MultiVectorIndex`` offers ([] when the index is not installed)."""
    try:
        from tessera.index import MultiVectorIndex  # noqa: F401
    except ImportError:
        return []
    try:
        from tessera.index.methods import METHODS
    except ImportError:
        return ["plaid", "xtr", "prf"]
    return list(METHODS)


def via_index(method: str) -> SearchFn:
    """A search function that builds an in-memory MultiVectorIndex and searches it with ``method``."""

    def search(queries: torch.Tensor, docs: PackedDocuments, ids: Sequence[str], opts: SearchOptions) -> Hits:
        from tessera.index import MultiVectorIndex

        try:
            t0 = time.perf_counter()
            index = MultiVectorIndex.create(None, docs.dim, nbits=opts.nbits, device=opts.device, auto_retrain=False)
            index.add(list(ids), docs)
            t1 = time.perf_counter()
            results = index.search(queries, k=opts.k, method=method, params=opts.params or None)
            t2 = time.perf_counter()
        except ValueError as exc:
            raise MethodError(f"method {method!r}: {exc}") from None
        opts.info.update(index_build_seconds=t1 - t0, retrieval_seconds=t2 - t1,
                         index_memory_bytes=int(index.stats()["memory_bytes"]))
        return [[(hit.id, hit.score) for hit in row] for row in results]

    search.__doc__ = f"{method} search through an in-memory tessera.index.MultiVectorIndex."
    return search


BUILTIN: dict[str, SearchFn] = {"exact": exact}


def available_methods() -> list[str]:
    return list(BUILTIN) + [m for m in index_methods() if m not in BUILTIN]


def get_method(name: str, params: dict | None = None) -> SearchFn:
    """The search function for ``name``; ``params`` are checked now, before any encoding is spent."""
    if name in BUILTIN:
        if params:
            raise MethodError(f"method {name!r} takes no parameters, got {', '.join(sorted(params))}")
        return BUILTIN[name]
    if name in index_methods():
        _check_index_params(name, params or {})
        return via_index(name)
    raise MethodError(f"unknown search method {name!r} (available: {', '.join(available_methods())})")


def _check_index_params(method: str, params: dict) -> None:
    try:
        from tessera.index.methods import METHODS
        from tessera.index.validation import check_params
    except ImportError:  # checked by the index at search time instead
        return
    try:
        check_params(method, params, METHODS[method].PARAMS)
    except ValueError as exc:
        raise MethodError(f"method {method!r}: {exc}") from None
