"""Collections over the training objectives' models: a CRISP model stores only its document
representatives and is searched as usual; a dense (DupMAE) model is refused with a clear message."""

from __future__ import annotations

import pytest
import torch
from service_helpers import make_docs

from tessera.client.errors import InvalidArgument
from tessera.scoring import maxsim_scores
from tessera.service.engine import Engine
from tessera.training.checkpoints import load_encoder, new_encoder, save_checkpoint
from tessera.training.config import EncoderConfig
from tessera.training.crisp import ClusterSpec

DOCS = make_docs(40)


@pytest.fixture(scope="module")
def crisp_model(tiny_bert_dir, tmp_path_factory):
    torch.manual_seed(3)
    cfg = ClusterSpec.parse("C3x5").apply(
        EncoderConfig(backbone=str(tiny_bert_dir), dim=16, query_maxlen=12, doc_maxlen=32))
    return save_checkpoint(new_encoder(cfg), tmp_path_factory.mktemp("crisp") / "model")


def test_crisp_collection_stores_only_representatives(tmp_path, crisp_model):
    engine = Engine(tmp_path / "data")
    try:
        engine.create_collection("c", str(crisp_model), index_settings={"auto_retrain": False, "keep_vectors": True})
        engine.upsert("c", DOCS)
        enc = load_encoder(str(crisp_model))
        packed = enc.encode_documents([d["text"] for d in DOCS])
        assert (packed.lengths <= 5).all()
        assert engine.stats("c").collections[0].vectors == int(packed.lengths.sum())
        query = "protein cancer therapy"
        got = engine.search("c", query, k=5, method="exact")
        exact = maxsim_scores(enc.encode_queries([query]), packed)[0]
        best = exact.topk(5)
        assert got.ids == [DOCS[j]["id"] for j in best.indices.tolist()]
        assert [h.score for h in got.hits] == pytest.approx(best.values.tolist(), abs=2e-3)
        two = engine.search("c", query, k=5, method="two-stage", params={"candidates": 40})
        assert two.ids == got.ids
    finally:
        engine.close()


def test_nbits_default_by_model(tmp_path, crisp_model, tiny_model_dir):
    """Cluster representatives get 4-bit residuals unless asked otherwise; token vectors 2."""
    engine = Engine(tmp_path / "data")
    try:
        assert engine.create_collection("crisp", str(crisp_model)).nbits == 4
        assert engine.create_collection("crisp2", str(crisp_model), nbits=2).nbits == 2
        assert engine.create_collection("plain", str(tiny_model_dir)).nbits == 2
        engine.upsert("crisp", DOCS[:10])
        assert engine._live["crisp"].index.nbits == 4
    finally:
        engine.close()
    engine = Engine(tmp_path / "data")  # the choice is stored, not recomputed
    try:
        assert [c.nbits for c in engine.list_collections()] == [4, 2, 2]
    finally:
        engine.close()


def test_dense_model_is_refused_for_a_collection(tmp_path, tiny_bert_dir):
    torch.manual_seed(4)
    cfg = EncoderConfig(backbone=str(tiny_bert_dir), dim=8, query_maxlen=12, doc_maxlen=32, kind="dupmae",
                        bow_dim=16, bow_topk=8)
    dense = save_checkpoint(new_encoder(cfg), tmp_path / "dense")
    engine = Engine(tmp_path / "data")
    try:
        with pytest.raises(InvalidArgument, match="dense .*multi-vector"):
            engine.create_collection("d", str(dense))
    finally:
        engine.close()
