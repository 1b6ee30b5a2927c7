"""Shared fixtures: a tiny random BERT folder (once per session) and a fresh tiny encoder per test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tessera.training.checkpoints import new_encoder
from tessera.training.config import EncoderConfig
from tessera.training.encoder import Encoder
from tessera.training.testing import make_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 32) with a small uncased WordPiece vocabulary; do not modify it."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def tiny_encoder(tiny_bert_dir) -> Encoder:
    """A fresh encoder over ``tiny_bert_dir``: dim 16, query_maxlen 12, doc_maxlen 32, seeded projection."""
    torch.manual_seed(0)
    return new_encoder(EncoderConfig(backbone=str(tiny_bert_dir), dim=16, query_maxlen=12, doc_maxlen=32))
