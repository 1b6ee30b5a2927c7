"""evaluate(): BM25, MiniLM and multi-vector runs on a small BEIR folder, and the encoding cache."""

from __future__ import annotations

import json

import pytest
import torch
from eval_helpers import DOCS, QRELS, QUERIES, write_beir

from tessera.errors import ModelError
from tessera.eval import evaluate
from tessera.eval.bm25 import BM25
from tessera.eval.dense import MeanPoolingEncoder
from tessera.eval.methods import MethodError, available_methods
from tessera.training.encoder import Encoder

RESULT_KEYS = {
    "ndcg@10",
    "recall@100",
    "mrr@10",
    "map",
    "queries",
    "docs",
    "encode_seconds",
    "search_seconds",
    "model",
    "method",
    "split",
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def count_calls(monkeypatch):
    """Wrap a method so calls are counted; the real method still runs."""

    def install(cls, name):
        calls = []
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            calls.append(len(args[0]) if args else None)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)
        return calls

    return install


def test_bm25_ranks_the_matching_document_first():
    ids = list(DOCS)
    bm25 = BM25([f"{title} {text}" for title, text in DOCS.values()])
    rows = bm25.search(bm25.tokenize_queries(["virus immune", "city moon", "unrelatedword"]), k=5)
    assert ids[rows[0][0][0]] == "d3"
    assert ids[rows[1][0][0]] == "d5"
    assert rows[2] == []  # shares no term with any document
    assert all(s > 0 for row in rows for _, s in row)


def test_bm25_evaluation(beir_dir, tmp_path):
    result = evaluate(beir_dir, "bm25", cache_dir=tmp_path / "cache")
    assert RESULT_KEYS <= set(result)
    assert result["ndcg@10"] == result["mrr@10"] == result["recall@100"] == result["map"] == 1.0
    assert (result["queries"], result["docs"], result["model"], result["split"]) == (6, 8, "bm25", "test")


def test_bm25_indexes_titles(tmp_path):
    docs = {"a": ("protein", "cells"), "b": ("tree", "cells")}
    root = write_beir(tmp_path / "beir", docs, {"q": "protein"}, {"q": {"a": 1}})
    assert evaluate(root, "bm25", use_cache=False)["mrr@10"] == 1.0


def test_multivector_checkpoint_cache_hit(beir_dir, tmp_path, tiny_checkpoint, count_calls):
    calls = count_calls(Encoder, "encode_documents")
    cache = tmp_path / "cache"
    first = evaluate(beir_dir, str(tiny_checkpoint), cache_dir=cache)
    assert first["doc_cache"] == "miss" and calls == [len(DOCS)]
    entries = sorted(p.name for p in (cache / "encodings").iterdir())
    assert len(entries) == 2 and entries[0].endswith(".json") and entries[1].endswith(".safetensors")
    about = json.loads((cache / "encodings" / entries[0]).read_text())
    assert about["model"] == str(tiny_checkpoint) and about["docs"] == len(DOCS)

    second = evaluate(beir_dir, str(tiny_checkpoint), cache_dir=cache)
    assert second["doc_cache"] == "hit" and calls == [len(DOCS)]  # not encoded again
    for key in ("ndcg@10", "recall@100", "mrr@10", "map"):
        assert second[key] == first[key]
    assert 0.0 <= first["ndcg@10"] <= 1.0 and first["recall@100"] == 1.0  # all 8 documents retrieved


def test_cache_key_follows_corpus_and_model(beir_dir, tmp_path, tiny_checkpoint, tiny_bert_dir, count_calls):
    from tessera.training.checkpoints import new_encoder, save_checkpoint
    from tessera.training.config import EncoderConfig

    calls = count_calls(Encoder, "encode_documents")
    cache = tmp_path / "cache"
    evaluate(beir_dir, str(tiny_checkpoint), cache_dir=cache)
    changed = dict(DOCS, d7=("colors", "red green blue light"))
    other = write_beir(tmp_path / "other", changed, QUERIES, QRELS)
    assert evaluate(other, str(tiny_checkpoint), cache_dir=cache)["doc_cache"] == "miss"
    torch.manual_seed(1)  # same backbone and config, different projection weights
    model2 = save_checkpoint(
        new_encoder(EncoderConfig(backbone=str(tiny_bert_dir), dim=16, query_maxlen=12, doc_maxlen=32)),
        tmp_path / "model2",
    )
    assert evaluate(beir_dir, str(model2), cache_dir=cache)["doc_cache"] == "miss"
    assert len(calls) == 3
    assert len(list((cache / "encodings").glob("*.safetensors"))) == 3
    assert not list((cache / "encodings").glob(".*"))  # no temporary files left behind


def test_damaged_cache_entry_is_reencoded(beir_dir, tmp_path, tiny_checkpoint, count_calls):
    calls = count_calls(Encoder, "encode_documents")
    cache = tmp_path / "cache"
    first = evaluate(beir_dir, str(tiny_checkpoint), cache_dir=cache)
    (entry,) = (cache / "encodings").glob("*.safetensors")
    entry.write_bytes(b"not safetensors")
    second = evaluate(beir_dir, str(tiny_checkpoint), cache_dir=cache)
    assert second["doc_cache"] == "miss" and len(calls) == 2
    assert second["ndcg@10"] == first["ndcg@10"]
    assert evaluate(beir_dir, str(tiny_checkpoint), cache_dir=cache)["doc_cache"] == "hit"


def test_no_cache_writes_nothing(beir_dir, tmp_path, tiny_checkpoint):
    result = evaluate(beir_dir, str(tiny_checkpoint), cache_dir=tmp_path / "cache", use_cache=False)
    assert result["doc_cache"] == "off"
    assert not (tmp_path / "cache").exists()


def test_default_cache_dir_from_environment(beir_dir, tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "envcache"))
    evaluate(beir_dir, str(tiny_checkpoint))
    assert len(list((tmp_path / "envcache" / "encodings").glob("*.safetensors"))) == 1


def test_index_method_through_multivector_index(beir_dir, tmp_path, tiny_checkpoint):
    assert available_methods()[0] == "exact"
    assert {"plaid", "xtr", "prf"} <= set(available_methods())
    result = evaluate(beir_dir, str(tiny_checkpoint), method="plaid", cache_dir=tmp_path / "cache", k=100)
    assert result["method"] == "plaid" and result["queries"] == 6
    assert 0.0 <= result["ndcg@10"] <= 1.0
    with pytest.raises(MethodError, match="ncells"):
        evaluate(
            beir_dir, str(tiny_checkpoint), method="exact", params={"ncells": 2}, cache_dir=tmp_path / "c"
        )


def test_unknown_method_lists_available(beir_dir, tiny_checkpoint):
    with pytest.raises(MethodError, match=r"unknown search method 'nosuch' \(available: exact, "):
        evaluate(beir_dir, str(tiny_checkpoint), method="nosuch")


def test_unknown_model(beir_dir):
    with pytest.raises(ModelError, match="unknown model 'nosuch'"):
        evaluate(beir_dir, "nosuch", use_cache=False)


def test_minilm_ranks_matching_documents_and_caches(beir_dir, tmp_path, count_calls):
    calls = count_calls(MeanPoolingEncoder, "encode")
    first = evaluate(beir_dir, "minilm", cache_dir=tmp_path / "cache")
    assert first["mrr@10"] == 1.0 and first["doc_cache"] == "miss"
    assert calls == [len(DOCS), len(QUERIES)]
    second = evaluate(beir_dir, "minilm", cache_dir=tmp_path / "cache")
    assert second["doc_cache"] == "hit" and calls == [len(DOCS), len(QUERIES), len(QUERIES)]
    assert second["ndcg@10"] == first["ndcg@10"]


def test_minilm_matches_reference_pooling():
    """Mean pooling over real tokens, normalised: the padded batch gives each text its unpadded embedding."""
    from tessera.eval.dense import minilm_path

    enc = MeanPoolingEncoder(minilm_path())
    assert enc.max_length == 256  # sentence_bert_config.json
    texts = ["a short text", "a much longer text about proteins in human cells and their expression levels"]
    batched = enc.encode(texts, batch_size=2)
    single = torch.cat([enc.encode([t], batch_size=1) for t in texts])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(2))
