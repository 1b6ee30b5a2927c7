"""Training on a CUDA device with ``--amp``: every objective trains there, the checkpoint reloads on
the CPU with the same vectors, and a killed GPU run resumes (on the GPU or on the CPU). Runs on a real
GPU (marked ``gpu``) and on the fake-cuda stand-in (tests/fake_cuda.py; autocast is off there, so it
checks device handling, not bf16 numerics)."""

from __future__ import annotations

import pytest
import torch
from test_trainer import _DiesAtStep2, _Killed, config

from tessera.training.checkpoints import load_encoder
from tessera.training.trainer import Trainer

OBJECTIVES = {
    "colbert": {"negatives_from": "bm25+model"},  # model-mined negatives: encodes the corpus on the device
    "xtr": {"objective": "xtr", "k_train": 8},
    "crisp": {"objective": "crisp", "crisp": "C2x4"},
    "dupmae": {"objective": "dupmae", "pairs": "crops", "negatives": 0, "bow_dim": 16, "bow_topk": 5, "dim": 8},
}
TEXTS = ["the red fish study of red fish in human data", "dog tree", "cancer cells in mice"]


def _vectors(encoded) -> torch.Tensor:
    """Multi-vector encoders give PackedDocuments, dense (DupMAE) ones a tensor."""
    return getattr(encoded, "vectors", encoded).float()


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_trains_on_cuda_with_amp_and_reloads_on_the_cpu(tmp_path, tiny_bert_dir, objective, cuda):
    trainer = Trainer(config(tmp_path, tiny_bert_dir, device=cuda, amp=True, max_steps=4, **OBJECTIVES[objective]))
    assert next(trainer.encoder.model.parameters()).is_cuda
    path = trainer.train()
    loaded = load_encoder(str(path))  # on the CPU
    assert not next(loaded.model.parameters()).is_cuda
    want = _vectors(trainer.encoder.encode_documents(TEXTS))
    got = _vectors(loaded.encode_documents(TEXTS))
    assert not want.is_cuda  # encoders hand back CPU tensors
    torch.testing.assert_close(got, want, atol=3e-3, rtol=1e-3)


def test_a_killed_cuda_run_resumes_on_the_gpu_and_on_the_cpu(tmp_path, tiny_bert_dir, cuda):
    kw = dict(OBJECTIVES["dupmae"], device=cuda, max_steps=4, save_every=1)  # random masks on the device
    full = Trainer(config(tmp_path / "full", tiny_bert_dir, **kw)).train()
    with pytest.raises(_Killed):
        _DiesAtStep2(config(tmp_path / "killed", tiny_bert_dir, **kw)).train()
    resumed = Trainer(config(tmp_path / "killed", tiny_bert_dir, **kw)).train()
    torch.testing.assert_close(_vectors(load_encoder(str(resumed)).encode_documents(TEXTS)),
                               _vectors(load_encoder(str(full)).encode_documents(TEXTS)), atol=2e-3, rtol=1e-3)
    with pytest.raises(_Killed):
        _DiesAtStep2(config(tmp_path / "moved", tiny_bert_dir, **kw)).train()
    on_cpu = Trainer(config(tmp_path / "moved", tiny_bert_dir, **{**kw, "device": "cpu"})).train()
    assert (on_cpu / "tessera.json").is_file()
