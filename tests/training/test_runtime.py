"""Inference backends (torch int8, ONNX Runtime fp32/int8) against the torch fp32 encoder, on a tiny model."""

from __future__ import annotations

import pytest
import torch

from tessera.errors import ModelError
from tessera.training import runtime
from tessera.training.runtime import Runtime

QUERIES = ["red fish", "what about the cancer cells in mice, and why?", "the " * 30 + "dog", "gene"]
DOCS = [
    "the red fish, the blue sun.",
    "dog",
    "",
    "cancer cells (in mice) were found; gene expression increased!",
    " ".join(["protein"] * 60) + " end",
    "a",
    "clinical study of women and men: blood levels, risk and age",
    "brain tumor immune response to drug therapy in children",
]


def _maxsim(q: torch.Tensor, packed) -> torch.Tensor:
    """[nq, ndocs] MaxSim scores."""
    scores = torch.zeros(q.shape[0], len(packed))
    start = 0
    for j, n in enumerate(packed.lengths.tolist()):
        d = packed.vectors[start : start + n].float()
        start += n
        if n:
            scores[:, j] = (q @ d.T).max(-1).values.sum(-1)
    return scores


def _reference(enc):
    return enc.encode_queries(QUERIES), enc.encode_documents(DOCS)


def _token_cosines(a, b) -> torch.Tensor:
    return (a.float() * b.float()).sum(-1)


def test_parse_specs():
    assert Runtime.parse("torch") == Runtime("torch", None)
    assert Runtime.parse("onnx-int8", threads=2) == Runtime("onnx", "int8", 2)
    assert Runtime.parse("TORCH-INT8").name == "torch-int8"
    auto = Runtime.parse("auto", kind="queries")
    assert auto.name == (runtime.AUTO["queries"] if runtime.onnx_available() else "torch")
    assert Runtime("torch").is_reference and not Runtime("torch", "int8").is_reference
    for bad in ("tensorrt", "onnx-int4", "torch-"):
        with pytest.raises(ModelError, match="unknown encoder backend"):
            Runtime.parse(bad)
    with pytest.raises(ModelError, match="unknown quantisation"):
        Runtime("onnx", "fp8")
    with pytest.raises(ModelError, match="threads must be positive"):
        Runtime("torch", None, 0)


def test_reference_backend_is_the_model(tiny_encoder):
    q0, d0 = _reference(tiny_encoder)
    tiny_encoder.set_backend("torch")
    assert tiny_encoder.query_runner is None and tiny_encoder.backend_name("queries") == "torch"
    q1, d1 = _reference(tiny_encoder)
    assert torch.equal(q0, q1) and torch.equal(d0.vectors, d1.vectors)


def test_torch_int8_close_to_fp32(tiny_encoder):
    q0, d0 = _reference(tiny_encoder)
    tiny_encoder.set_backend("torch", "int8")
    assert tiny_encoder.backend_name("documents") == "torch-int8"
    q1, d1 = _reference(tiny_encoder)
    assert torch.equal(d0.lengths, d1.lengths) and torch.equal(d0.token_ids, d1.token_ids)
    assert _token_cosines(q0, q1).min() > 0.95
    # training still uses the fp32 model
    assert isinstance(tiny_encoder.model.linear, torch.nn.Linear)


def test_documents_bucketed_by_token_length(tiny_encoder):
    order = tiny_encoder.length_order(DOCS)
    lengths = [len(tiny_encoder.tokenize_documents([DOCS[i]])[0][0]) for i in order]
    assert lengths == sorted(lengths) and sorted(order) == list(range(len(DOCS)))
    # the result does not depend on how documents are batched together
    whole = tiny_encoder.encode_documents(DOCS, batch_size=3)
    one_by_one = [tiny_encoder.encode_documents([t]) for t in DOCS]
    assert whole.lengths.tolist() == [len(p.vectors) for p in one_by_one]
    cat = torch.cat([p.vectors for p in one_by_one]).float()
    assert _token_cosines(whole.vectors, cat).min() > 0.999


@pytest.fixture
def onnx_cache(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime (pip install 'tessera[onnx]')")
    return tmp_path_factory.getbasetemp() / "onnx-cache"  # shared by the tests of one session


def test_onnx_fp32_matches_torch(tiny_encoder, onnx_cache):
    q0, d0 = _reference(tiny_encoder)
    tiny_encoder.set_backend("onnx", cache_dir=onnx_cache)
    assert tiny_encoder.backend_name("queries") == "onnx"
    q1, d1 = _reference(tiny_encoder)
    assert q1.shape == q0.shape and q1.dtype == torch.float32
    assert torch.equal(d0.lengths, d1.lengths) and torch.equal(d0.token_ids, d1.token_ids)
    assert _token_cosines(q0, q1).min() > 0.99
    assert _token_cosines(d0.vectors, d1.vectors).min() > 0.99
    # batch size and padding do not change a text's vectors
    single = tiny_encoder.encode_queries(QUERIES[1:2])
    assert _token_cosines(single[0], q1[1]).min() > 0.999


def test_onnx_int8_keeps_rankings(tiny_encoder, onnx_cache):
    q0, d0 = _reference(tiny_encoder)
    tiny_encoder.set_backend("onnx", "int8", cache_dir=onnx_cache)
    q1, d1 = _reference(tiny_encoder)
    assert torch.equal(d0.lengths, d1.lengths)
    assert _token_cosines(q0, q1).mean() > 0.95
    s0, s1 = _maxsim(q0, d0), _maxsim(q1, d1)
    # rank agreement: the same best document for every query, and Spearman correlation near 1
    assert torch.equal(s0.argmax(1), s1.argmax(1))
    r0, r1 = s0.argsort(1).argsort(1).float(), s1.argsort(1).argsort(1).float()
    n = s0.shape[1]
    spearman = 1 - 6 * ((r0 - r1) ** 2).sum(1) / (n * (n * n - 1))
    assert spearman.min() > 0.9
    # the recipe: backbone MatMul/Attention in int8; embeddings and the final projection stay fp32
    import onnx

    graph = onnx.load(str(tiny_encoder.query_runner.path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"MatMulInteger", "QAttention"} <= ops and "QEmbedLayerNormalization" not in ops
    assert [n.name for n in graph.node if n.op_type == "MatMul"] == ["/linear/MatMul"]


def test_onnx_export_is_cached_per_checkpoint(tiny_encoder, onnx_cache):
    first = runtime.onnx_model_path(tiny_encoder.model, None, onnx_cache)
    stamp = first.stat().st_mtime_ns
    again = runtime.onnx_model_path(tiny_encoder.model, None, onnx_cache)
    assert again == first and again.stat().st_mtime_ns == stamp
    with torch.no_grad():
        tiny_encoder.model.linear.weight.add_(0.01)
    changed = runtime.onnx_model_path(tiny_encoder.model, None, onnx_cache)
    assert changed != first and changed.is_file()


def test_onnx_serves_concurrent_threads(tiny_encoder, onnx_cache):
    from concurrent.futures import ThreadPoolExecutor

    tiny_encoder.set_backend("onnx", threads=1, cache_dir=onnx_cache)
    want = tiny_encoder.encode_queries(QUERIES)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: tiny_encoder.encode_queries([QUERIES[i % 4]])[0], range(16)))
    for i, g in enumerate(got):
        assert _token_cosines(g, want[i % 4]).min() > 0.999


def test_backends_need_a_multivector_model(tiny_bert_dir, tmp_path):
    from tessera.training.checkpoints import new_encoder
    from tessera.training.config import EncoderConfig

    dense = new_encoder(EncoderConfig(backbone=str(tiny_bert_dir), dim=16, kind="dupmae"))
    with pytest.raises(ModelError, match="multi-vector models only"):
        runtime.make_runner(dense.model, Runtime("torch", "int8"))
