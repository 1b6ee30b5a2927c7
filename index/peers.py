"""Peer engines (colbert-ai PLAID, PyLate + fast-plaid) run side by side with Tessera's methods.

Each peer lives in its own virtual environment, ``benchmarks/peers/<name>/venv`` (made by
``benchmarks/peers/setup.sh``), never as a dependency of Tessera. The benchmark dumps its embeddings
once (fp16 document vectors, lengths and fp32 queries, cached by content) and starts each peer's
``runner.py`` as a subprocess that builds the peer's index from exactly those vectors (the peer's
encoder is bypassed) and answers search requests over a JSON-lines pipe (see
``benchmarks/peers/peer_protocol.py``). Latencies are measured inside the peer around its search call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import threading
from collections import deque
from pathlib import Path

import numpy as np
import torch

from tessera.errors import DataError
from tessera.packed import PackedDocuments

log = logging.getLogger(__name__)

KNOWN_PEERS = ("colbert-ai", "pylate-fastplaid")


def dump_fingerprint(docs: PackedDocuments, queries: torch.Tensor) -> str:
    h = hashlib.sha1()
    h.update(np.asarray(docs.lengths.numpy()).tobytes())
    h.update(docs.vectors[:: max(1, docs.vectors.shape[0] // 4096)].to(torch.float16).numpy().tobytes())
    h.update(queries.to(torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def dump_embeddings(docs: PackedDocuments, queries: torch.Tensor, cache: Path) -> Path:
    """Write (once per content) the vectors the peers index: ``<cache>/bench/peers-<fingerprint>/``."""
    fp = dump_fingerprint(docs, queries)
    folder = cache / "bench" / f"peers-{fp}"
    if (folder / "meta.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "doc_vectors.npy", docs.vectors.to(torch.float16).numpy())
    np.save(tmp / "doc_lengths.npy", docs.lengths.to(torch.int64).numpy())
    np.save(tmp / "queries.npy", queries.to(torch.float32).numpy())
    meta = {
        "fingerprint": fp,
        "dim": int(docs.dim),
        "documents": int(docs.lengths.numel()),
        "vectors": int(docs.vectors.shape[0]),
        "queries": int(queries.shape[0]),
    }
    (tmp / "meta.json").write_text(json.dumps(meta))
    tmp.rename(folder)
    return folder


def peer_python(peers_dir: Path, name: str) -> tuple[Path, Path]:
    """(venv python, runner script) of a peer (``<peers_dir>/<name>/runner.py``, run by the python of
    ``<peers_dir>/<name>/venv``); a clear error when it has not been set up."""
    python = peers_dir / name / "venv" / "bin" / "python"
    runner = peers_dir / name / "runner.py"
    if not runner.is_file():
        if name not in KNOWN_PEERS:
            raise DataError(f"unknown peer {name!r} (known: {', '.join(KNOWN_PEERS)})")
        raise DataError(f"no peer runner at {runner}: give --peers-dir (the repository's benchmarks/peers)")
    if not python.is_file():
        raise DataError(f"peer {name} is not set up ({python} missing): run {peers_dir / 'setup.sh'} {name}")
    return python, runner


class Peer:
    """A peer engine's runner subprocess: builds its index at start, then answers searches."""

    def __init__(self, name: str, peers_dir: Path, dump: Path, index_dir: Path, threads: int) -> None:
        python, runner = peer_python(peers_dir, name)
        self.name = name
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [str(python), str(runner), "--dump", str(dump), "--index", str(index_dir), "--threads", str(threads)]
        log.info("starting peer %s: %s", name, " ".join(cmd))
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self._stderr: deque[str] = deque(maxlen=40)
        self._drain = threading.Thread(target=self._read_stderr, name=f"peer-{name}-stderr", daemon=True)
        self._drain.start()
        self.info = self._read()
        if not self.info.get("ready"):
            raise DataError(f"peer {name} did not start: {self.info}")

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip())
            log.debug("[%s] %s", self.name, line.rstrip())

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            tail = "\n".join(self._stderr)
            raise DataError(f"peer {self.name} exited with status {self._proc.returncode}:\n{tail}")
        return json.loads(line)

    def search(self, queries: list[int], k: int) -> tuple[list[list[int]], list[list[float]], list[float]]:
        """(document numbers, scores, per-query ms) for the given query numbers of the dump."""
        self._proc.stdin.write(json.dumps({"queries": queries, "k": k}) + "\n")
        self._proc.stdin.flush()
        out = self._read()
        return out["ids"], out["scores"], out["ms"]

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
