"""The engine's encoder backends: ONNX Runtime (int8) queries give the torch results; bad specs fail early."""

from __future__ import annotations

import pytest
from service_helpers import make_docs

from tessera.errors import ModelError, TesseraError
from tessera.service.engine import Engine

DOCS = make_docs(60)
QUERIES = [DOCS[3]["text"], "protein cancer therapy", DOCS[17]["text"]]


def _top(engine: Engine, k: int = 5) -> list[list[str]]:
    return [r.ids for r in engine.batch_search("docs", QUERIES, k=k, method="exact")]


def test_onnx_backends_agree_with_torch(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
    tops = {}
    for name, query, doc in (("torch", "torch", "torch"), ("onnx", "onnx-int8", "onnx")):
        with Engine(tmp_path / name, query_backend=query, doc_backend=doc, encoder_threads=1) as engine:
            engine.create_collection("docs", str(tiny_model_dir))
            engine.upsert("docs", DOCS)
            slot = engine._get("docs").slot
            assert slot.query_encoder.backend_name("queries") == query
            assert slot.doc_encoder.backend_name("documents") == doc
            tops[name] = _top(engine)
    for want, got in zip(tops["torch"], tops["onnx"], strict=True):
        assert want[0] == got[0]  # the document a query was copied from stays first
        assert len(set(want) & set(got)) >= 3


def test_bad_backend_fails_at_start(tmp_path):
    with pytest.raises(ModelError, match="unknown encoder backend"):
        Engine(tmp_path / "a", query_backend="tensorrt")


def test_onnx_backend_without_onnxruntime(tmp_path, tiny_model_dir, monkeypatch):
    from tessera.training import runtime

    monkeypatch.setattr(runtime, "onnx_available", lambda: False)  # as where onnxruntime is not installed
    with pytest.raises(TesseraError, match="needs onnxruntime"):
        Engine(tmp_path / "a", query_backend="onnx-int8")
    with Engine(tmp_path / "b", query_backend="auto", doc_backend="auto") as engine:  # auto falls back to torch
        engine.create_collection("docs", str(tiny_model_dir))
        slot = engine._get("docs").slot
        assert slot.query_encoder.backend_name("queries") == "torch"
        assert slot.doc_encoder.backend_name("documents") == "torch"
