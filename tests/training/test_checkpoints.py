"""Tessera's checkpoint format: round trips, version and name errors, LoRA adapters."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

from tessera.errors import ModelError
from tessera.training import checkpoints
from tessera.training.checkpoints import load_encoder, new_encoder, save_checkpoint
from tessera.training.config import EncoderConfig

QUERIES = ["red fish in water", "cancer cells"]
DOCS = ["the red fish, the blue sun.", "cancer cells in mice were found", "dog"]
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "lora_dropout": 0.0}


def _assert_same_vectors(a, b, atol=1e-5):
    torch.testing.assert_close(a.encode_queries(QUERIES), b.encode_queries(QUERIES), atol=atol, rtol=1e-4)
    da, db = a.encode_documents(DOCS), b.encode_documents(DOCS)
    assert torch.equal(da.lengths, db.lengths) and torch.equal(da.token_ids, db.token_ids)
    torch.testing.assert_close(da.vectors.float(), db.vectors.float(), atol=max(atol, 2e-3), rtol=0)


def test_save_and_load_round_trip(tmp_path, tiny_encoder):
    path = save_checkpoint(tiny_encoder, tmp_path / "model", extra={"note": "x"})
    meta = json.loads((path / "tessera.json").read_text())
    assert meta["format"] == "tessera" and meta["note"] == "x"
    loaded = load_encoder(str(path))
    assert loaded.config == tiny_encoder.config
    assert torch.equal(loaded.model.linear.weight, tiny_encoder.model.linear.weight)
    _assert_same_vectors(loaded, tiny_encoder)


def test_newer_format_version_is_refused(tmp_path, tiny_encoder):
    path = save_checkpoint(tiny_encoder, tmp_path / "model")
    meta = json.loads((path / "tessera.json").read_text())
    meta["format_version"] = checkpoints.FORMAT_VERSION + 1
    (path / "tessera.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="newer"):
        load_encoder(str(path))


def test_unknown_model_name_lists_available_names(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setattr(checkpoints, "PRETRAINED_DIR", tmp_path)
    for name in ("alpha", "beta"):
        save_checkpoint(tiny_encoder, tmp_path / name)
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelError) as err:
        load_encoder("no-such-model")
    assert "available: alpha, beta)" in str(err.value)
    # a packaged name resolves to its folder
    _assert_same_vectors(load_encoder("beta"), tiny_encoder)


def test_a_folder_in_no_known_layout_is_a_model_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a recognised checkpoint layout"):
        load_encoder(str(tmp_path / "empty"))


def _adapted_encoder(tiny_bert_dir):
    """An encoder whose backbone carries a LoRA adapter with non-zero (random) weights."""
    torch.manual_seed(1)
    enc = new_encoder(EncoderConfig(backbone=str(tiny_bert_dir), dim=16, query_maxlen=12, doc_maxlen=32))
    enc.model.backbone = get_peft_model(enc.model.backbone, LoraConfig(**LORA))
    with torch.no_grad():
        for name, p in enc.model.backbone.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    enc.model.eval()
    return enc


@pytest.mark.parametrize("fp16", [False, True])
def test_lora_adapter_checkpoint_reloads_merged(tmp_path, tiny_bert_dir, fp16):
    enc = _adapted_encoder(tiny_bert_dir)
    plain = new_encoder(enc.config)
    with torch.no_grad():
        plain.model.linear.weight.copy_(enc.model.linear.weight)
    # the adapter really changes the vectors, so reproducing them means it was applied
    assert (enc.encode_queries(QUERIES) - plain.encode_queries(QUERIES)).abs().max() > 1e-2
    adapter = {"config": LORA, "tensors": get_peft_model_state_dict(enc.model.backbone), "fp16": fp16}
    path = save_checkpoint(enc, tmp_path / "adapter", adapter=adapter)
    assert not (path / "backbone").exists()
    meta = json.loads((path / "tessera.json").read_text())
    assert meta["backbone"] == {"source": "reference", "name": str(tiny_bert_dir)} and meta["adapter"] == LORA
    loaded = load_encoder(str(path))
    assert not any("lora" in n for n, _ in loaded.model.backbone.named_parameters())  # merged
    _assert_same_vectors(loaded, enc, atol=2e-3 if fp16 else 1e-5)
