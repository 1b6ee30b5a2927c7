"""Fixtures for the eval tests: a small BEIR folder and a tiny saved multi-vector checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eval_helpers import write_beir

from tessera.training.checkpoints import new_encoder, save_checkpoint
from tessera.training.config import EncoderConfig


@pytest.fixture
def beir_dir(tmp_path) -> Path:
    return write_beir(tmp_path / "beir")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_bert_dir) -> Path:
    """A saved Tessera checkpoint over the tiny random BERT (dim 16)."""
    torch.manual_seed(0)
    encoder = new_encoder(EncoderConfig(backbone=str(tiny_bert_dir), dim=16, query_maxlen=12, doc_maxlen=32))
    return save_checkpoint(encoder, tmp_path_factory.mktemp("ckpt") / "model")
