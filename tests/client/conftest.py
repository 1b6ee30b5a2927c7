"""Client tests reuse the service test helpers (tests/service/service_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from service_helpers import make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_bert_dir, tmp_path_factory):
    return make_tiny_model(tiny_bert_dir, tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)
