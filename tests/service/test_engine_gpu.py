"""A service engine on a CUDA device (``tessera serve --device cuda``): encoders and indexes on the
GPU give the CPU engine's answers. Runs on a real GPU (marked ``gpu``) and on the fake-cuda stand-in
(tests/fake_cuda.py), which fails on any mix of CPU and CUDA tensors."""

from __future__ import annotations

import pytest
from service_helpers import make_docs

from tessera.service.engine import Engine

DOCS = make_docs(60)
QUERIES = ["protein cancer therapy", "the cell and the gene", "water"]
METHODS = [("exact", {}), ("plaid", {}), ("xtr", {}), ("prf", {}), ("two-stage", {"candidates": 30})]


def _answers(engine: Engine) -> list:
    out = []
    for method, params in METHODS:
        for q in QUERIES:
            out.append(engine.search("c", q, k=5, method=method, params=params).ids)
        out.append(engine.search("c", QUERIES[0], k=5, method=method, params=params, filter={"lang": "fr"}).ids)
    out.append([h.id for h in engine.rerank("c", QUERIES[0], ids=[d["id"] for d in DOCS[2:22]], top_k=5)])
    out.append([h.score for h in engine.rerank("c", QUERIES[1], passages=["cancer gene", "water fish"])])
    return out


def _serve(folder, device, model) -> list:
    engine = Engine(folder, device=device)
    try:
        engine.create_collection("c", str(model), index_settings={"auto_retrain": False, "ncentroids": 32})
        engine.upsert("c", DOCS[:40])
        engine.upsert("c", DOCS[40:])
        engine.delete("c", ids=[DOCS[0]["id"], DOCS[1]["id"]])
        first = _answers(engine)
    finally:
        engine.close()
    engine = Engine(folder, device=device)  # reopened from disk
    try:
        assert _answers(engine) == first
    finally:
        engine.close()
    return first


def test_engine_on_cuda_answers_as_on_the_cpu(tmp_path, tiny_model_dir, cuda):
    on_gpu = _serve(tmp_path / "gpu", cuda, tiny_model_dir)
    on_cpu = _serve(tmp_path / "cpu", "cpu", tiny_model_dir)
    for a, b in zip(on_gpu, on_cpu, strict=True):
        if a and isinstance(a[0], float):
            assert a == pytest.approx(b, abs=1e-3)
        else:
            assert a == b
