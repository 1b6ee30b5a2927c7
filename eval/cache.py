"""On-disk cache of document encodings, keyed by model, corpus and encoder settings.

A cache entry is one safetensors file named by the SHA-256 of (cache format, model fingerprint,
corpus fingerprint, encoder settings), with a small JSON file beside it saying what it holds.
Files are written to a temporary name and renamed, so a killed run never leaves a torn entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tessera.packed import PackedDocuments

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
ENV_VAR = "TESSERA_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$TESSERA_CACHE_DIR``, else ``~/.cache/tessera``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tessera"


def corpus_fingerprint(ids: Sequence[str], texts: Sequence[str]) -> str:
    """SHA-256 of the (id, text) pairs in order: what an encoding of the corpus depends on."""
    h = hashlib.sha256()
    for doc_id, text in zip(ids, texts, strict=True):
        for part in (doc_id, text):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def model_fingerprint(model: nn.Module, tokenizer, settings: dict) -> str:
    """SHA-256 of a loaded model's weights and buffers, its tokenizer and its encoding settings.

    Hashing the loaded state (rather than the files it came from) covers every way a model can
    be specified: packaged names, Tessera folders, adapters over a referenced backbone (merged at
    load time), foreign layouts and hub ids.
    """
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class EncodingCache:
    """Document encodings under ``root/encodings``; ``root=None`` disables caching."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    @staticmethod
    def key(model_fp: str, corpus_fp: str, settings: dict) -> str:
        blob = json.dumps(
            {"format": CACHE_FORMAT, "model": model_fp, "corpus": corpus_fp, "settings": settings},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / "encodings" / f"{key}.safetensors"

    def _entry(self, key: str) -> Path | None:
        if self.root is None:
            return None
        path = self.path(key)
        return path if path.is_file() else None

    def _store(self, key: str, write: Callable[[Path], None], about: dict) -> None:
        if self.root is None:
            return
        path = self.path(key)
        _atomic_write(path, write)
        info = {**about, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "format": CACHE_FORMAT}
        text = json.dumps(info, indent=2, default=str) + "\n"
        _atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(text))
        log.info("cached document encodings in %s", path)

    def load_packed(self, key: str, count: int) -> PackedDocuments | None:
        """Cached multi-vector encodings of ``count`` documents, or None."""
        path = self._entry(key)
        if path is None:
            return None
        try:
            docs = PackedDocuments.load(path)
        except Exception as exc:  # a damaged entry is re-encoded, not fatal
            log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            return None
        return docs if len(docs) == count else None

    def save_packed(self, key: str, docs: PackedDocuments, about: dict) -> None:
        self._store(key, docs.save, about)

    def load_dense(self, key: str, count: int) -> torch.Tensor | None:
        """A cached [count, dim] single-vector matrix, or None."""
        path = self._entry(key)
        if path is None:
            return None
        try:
            emb = load_file(str(path)).get("embeddings")
        except Exception as exc:
            log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            return None
        if emb is None or emb.ndim != 2 or emb.shape[0] != count:
            return None
        return emb

    def save_dense(self, key: str, embeddings: torch.Tensor, about: dict) -> None:
        tensors = {"embeddings": embeddings.contiguous()}
        self._store(key, lambda tmp: save_file(tensors, str(tmp)), about)
