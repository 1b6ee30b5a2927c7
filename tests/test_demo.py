"""`tessera demo`: a real server process, the sample corpus through the SDK, queries, a clean stop."""

from __future__ import annotations

import re
import subprocess
import sys

import torch

from tessera.demo import SAMPLE_CORPUS
from tessera.training.checkpoints import new_encoder, save_checkpoint
from tessera.training.config import EncoderConfig


def make_tiny_model(bert_dir, out):
    torch.manual_seed(0)
    enc = new_encoder(EncoderConfig(backbone=str(bert_dir), dim=16, query_maxlen=12, doc_maxlen=32))
    return save_checkpoint(enc, out)


def _demo(model_dir, data_dir, *extra):
    cmd = [sys.executable, "-m", "tessera.cli", "demo", "--model", str(model_dir), "--data-dir", str(data_dir)]
    return subprocess.run([*cmd, "--k", "2", *extra], capture_output=True, text=True, timeout=300)


def test_demo_serves_indexes_queries_and_stops(tiny_bert_dir, tmp_path):
    model = make_tiny_model(tiny_bert_dir, tmp_path / "model")
    n = sum(1 for line in SAMPLE_CORPUS.read_text().splitlines() if line.strip())
    first = _demo(model, tmp_path / "data")
    assert first.returncode == 0, first.stderr + first.stdout
    out = first.stdout
    assert "serving on 127.0.0.1:" in out and "server stopped (exit code 0)" in out
    assert f"{n} passages" in out and f"({n} new," in out
    assert len(re.findall(r"^Q: ", out, re.M)) == 3
    assert len(re.findall(r"^  [12]\. \[", out, re.M)) == 6
    # The server's own SQLite store and index persist; a second run re-encodes nothing.
    assert (tmp_path / "data" / "tessera.db").is_file()
    second = _demo(model, tmp_path / "data", "what is a segment?")
    assert second.returncode == 0, second.stderr + second.stdout
    assert f"({0} new, 0 changed, {n} unchanged" in second.stdout
    assert len(re.findall(r"^Q: ", second.stdout, re.M)) == 1


def test_demo_reports_an_unknown_model_without_traceback(tmp_path):
    result = _demo(tmp_path / "no-such-model", tmp_path / "data")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "no-such-model" in result.stderr + result.stdout
