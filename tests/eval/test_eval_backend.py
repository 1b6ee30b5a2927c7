"""``tessera eval --backend``: ONNX Runtime / int8 inference gives the torch results, cached apart."""

from __future__ import annotations

import json

import pytest

from tessera.cli import main


def _eval(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_onnx_backend_matches_torch(beir_dir, tmp_path, tiny_checkpoint, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--data", str(beir_dir), "--model", str(tiny_checkpoint), "--k", "100", "--json"]
    results = {}
    for backend in ("torch", "onnx", "onnx-int8", "torch-int8"):
        code, out, err = _eval(capsys, *common, "--backend", backend)
        assert code == 0, err
        results[backend] = json.loads(out.strip().splitlines()[-1])
    assert results["onnx"]["backend"] == {"queries": "onnx", "documents": "onnx"}
    assert results["torch"]["backend"] == {"queries": "torch", "documents": "torch"}
    keys = {r["cache_key"] for r in results.values()}
    assert len(keys) == 4  # each backend's document encodings are cached under their own key
    for name in ("onnx", "onnx-int8", "torch-int8"):
        assert results[name]["doc_cache"] == "miss"
        assert abs(results[name]["ndcg@10"] - results["torch"]["ndcg@10"]) < 0.05, name
    assert (tmp_path / "cache" / "onnx").is_dir()
    # the table names the backends
    code, out, _ = _eval(capsys, *common[:-1], "--backend", "onnx")
    assert code == 0 and "backend onnx/onnx (queries/documents)" in out


def test_bad_backend(beir_dir, tiny_checkpoint, capsys):
    code, _, err = _eval(capsys, "--data", str(beir_dir), "--model", str(tiny_checkpoint), "--backend", "tpu")
    assert code == 2 and "Traceback" not in err and "unknown encoder backend 'tpu'" in err


def test_backend_on_a_baseline(beir_dir, capsys):
    code, _, err = _eval(capsys, "--data", str(beir_dir), "--model", "bm25", "--backend", "onnx")
    assert code == 2 and "runs on torch only" in err
