"""Loading checkpoints in other projects' layouts (Stanford ColBERT, PyLate)."""

from __future__ import annotations

from pathlib import Path

from tessera.errors import ModelError
from tessera.training.encoder import Encoder


def load_foreign(path: Path, device: str = "cpu") -> Encoder:
    raise ModelError(f"{path}: not a recognised checkpoint layout (Tessera, Stanford ColBERT or PyLate)")
