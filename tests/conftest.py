"""Shared fixtures: a tiny random BERT folder (once per session), a fresh tiny encoder per test, and a
CUDA device (a real GPU, or the fake-cuda stand-in that runs anywhere)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from fake_cuda import fake_cuda

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


@pytest.fixture(
    params=[
        "fake-cuda",
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
        ),
    ]
)
def cuda(request, monkeypatch):
    """"cuda", twice: on a real GPU (marked ``gpu``, skipped without one) and on the stand-in of
    tests/fake_cuda.py, which fails on any mix of CPU and CUDA tensors (autocast is off there)."""
    if request.param == "cuda":
        yield "cuda"
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "CUDA is not available", UserWarning)
        with fake_cuda(monkeypatch):
            yield "cuda"
