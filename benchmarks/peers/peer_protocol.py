"""Shared by the peers' runner scripts (each runs in its peer's own venv: stdlib + numpy only).

A runner loads the embeddings that ``tessera bench search --peers`` dumped (``dump_dir``: fp16 document
token vectors, document lengths, fp32 queries), builds its engine's index from them (bypassing the
engine's encoder), prints one JSON line ``{"ready": true, ...build facts}`` and then serves requests,
one JSON line each on stdin, one JSON line each on stdout:

    {"queries": [0, 1, ...], "k": 10}  ->  {"ids": [[doc numbers]], "scores": [[...]], "ms": [per query]}
    {"quit": true}                      ->  (exits)

Latency ("ms") is measured inside the runner around the engine's search call for one query, so
inter-process overhead is excluded, as query encoding is for Tessera's own methods.
Everything else (progress, the engines' own logging) goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def load_dump(dump_dir: str | Path) -> dict:
    d = Path(dump_dir)
    meta = json.loads((d / "meta.json").read_text())
    vectors = np.load(d / "doc_vectors.npy", mmap_mode="r")
    lengths = np.load(d / "doc_lengths.npy")
    queries = np.load(d / "queries.npy")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return {"meta": meta, "vectors": vectors, "lengths": lengths, "offsets": offsets, "queries": queries}


def folder_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


_PROTOCOL = None


def claim_stdout() -> None:
    """Keep the real stdout for the protocol and send everything else written to fd 1 (the engines'
    prints, C extensions included) to stderr. Call first thing in a runner."""
    global _PROTOCOL
    if _PROTOCOL is None:
        sys.stdout.flush()
        _PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)


def serve(search, ready: dict) -> None:
    """Answer requests with ``search(query_number, k) -> (doc numbers, scores)`` until quit / EOF."""
    claim_stdout()
    out = _PROTOCOL
    with contextlib.redirect_stdout(sys.stderr):
        out.write(json.dumps({"ready": True, **ready}) + "\n")
        for line in sys.stdin:
            req = json.loads(line)
            if req.get("quit"):
                break
            ids, scores, ms = [], [], []
            for q in req["queries"]:
                t0 = time.perf_counter()
                got_ids, got_scores = search(int(q), int(req["k"]))
                ms.append((time.perf_counter() - t0) * 1000)
                ids.append([int(x) for x in got_ids])
                scores.append([float(x) for x in got_scores])
            out.write(json.dumps({"ids": ids, "scores": scores, "ms": ms}) + "\n")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
