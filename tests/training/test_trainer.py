"""The shared trainer on a tiny random BERT and a tiny BEIR folder."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tessera.errors import DataError
from tessera.training.checkpoints import load_encoder
from tessera.training.trainer import TrainConfig, Trainer

TOPICS = ["cancer cells", "red fish", "blue sun", "dog tree", "water fire", "brain blood", "virus dna", "moon star"]


def make_beir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    docs, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, topic in enumerate(TOPICS):
        docs.append({"_id": f"d{i}", "title": topic, "text": f"the {topic} study of {topic} in human data"})
        queries.append({"_id": f"q{i}", "text": f"what about {topic}"})
        qrels.append(f"q{i}\td{i}\t1")
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n")
    return root


def config(tmp_path: Path, backbone: Path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "out"), data=str(make_beir(tmp_path / "data")), backbone=str(backbone), dim=16,
                batch_size=4, negatives=1, negatives_from="bm25", max_steps=4, save_every=2, lora_rank=0,
                doc_maxlen=32, query_maxlen=8, lr=1e-3, warmup=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss_and_writes_a_loadable_model(tmp_path, tiny_bert_dir):
    cfg = config(tmp_path, tiny_bert_dir, max_steps=30, lr=3e-3, projection_lr=3e-3)
    trainer = Trainer(cfg)
    batch = trainer._batches_for_step(0)[0]
    with torch.no_grad():
        trainer.encoder.model.eval()
        before = trainer.objective.loss(trainer.encoder, batch)[0].item()
    path = trainer.train()
    with torch.no_grad():
        trainer.encoder.model.eval()
        after = trainer.objective.loss(trainer.encoder, batch)[0].item()
    assert after < before * 0.7
    loaded = load_encoder(str(path))
    q = ["what about red fish"]
    torch.testing.assert_close(loaded.encode_queries(q), trainer.encoder.encode_queries(q), atol=1e-5, rtol=1e-4)
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["max_steps"] == 30 and saved["seed"] == 42


def test_lora_training_saves_a_small_adapter_that_reloads(tmp_path, tiny_bert_dir):
    cfg = config(tmp_path, tiny_bert_dir, lora_rank=4, lora_alpha=8)
    trainer = Trainer(cfg)
    path = trainer.train()
    assert not (path / "backbone").exists()
    tensors = load_file(str(path / "adapter.safetensors"))
    assert tensors and all("lora_" in k for k in tensors)
    loaded = load_encoder(str(path))
    q = ["cancer cells"]
    torch.testing.assert_close(loaded.encode_queries(q), trainer.encoder.encode_queries(q), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("first_rank", [4, 0])
def test_lora_run_from_a_checkpoint_reloads_with_the_weights_it_started_from(tmp_path, tiny_bert_dir, first_rank):
    """``--init`` of a LoRA run: the saved model must carry the init's adapters (or its whole backbone)."""
    first = Trainer(config(tmp_path / "a", tiny_bert_dir, lora_rank=first_rank, lora_alpha=8, lr=3e-2,
                           max_steps=4)).train()
    trainer = Trainer(config(tmp_path / "b", tiny_bert_dir, lora_rank=4, lora_alpha=8, init=str(first), max_steps=2))
    path = trainer.train()
    q = ["cancer cells in mice"]
    want = trainer.encoder.encode_queries(q)
    torch.testing.assert_close(load_encoder(str(path)).encode_queries(q), want, atol=2e-3, rtol=1e-3)
    meta = json.loads((path / "tessera.json").read_text())
    if first_rank == 0:  # the init had its own backbone weights: saved whole
        assert (path / "backbone").is_dir() and meta["adapter"] is None
        return
    assert len(meta["base_adapters"]) == 1 and (path / "adapter-base-0.safetensors").is_file()
    # without the carried adapter the model is another one: this test would catch losing it
    meta.pop("base_adapters")
    (path / "tessera.json").write_text(json.dumps(meta))
    assert (load_encoder(str(path)).encode_queries(q) - want).abs().max() > 0.05


def test_same_seed_same_model(tmp_path, tiny_bert_dir):
    a = Trainer(config(tmp_path / "a", tiny_bert_dir)).train()
    b = Trainer(config(tmp_path / "b", tiny_bert_dir)).train()
    wa = load_file(str(a / "projection.safetensors"))["weight"]
    wb = load_file(str(b / "projection.safetensors"))["weight"]
    torch.testing.assert_close(wa, wb)


# Runs the CLI in a child that SIGKILLs itself at a chosen point of checkpointing, so the kill lands
# mid-run however fast the machine is: "after-save" right after step 3's state is complete,
# "between-renames" while step 4's state is swapped in (state moved to state.old, state.tmp not yet renamed).
_KILLING_CHILD = """
import os, signal, sys
from pathlib import Path
from tessera.training.trainer import Trainer
point = sys.argv.pop(1)
save, rename, swapping = Trainer._save_state, Path.rename, []
def save_state(self, step, pools_name):
    swapping[:] = [step == 4]
    save(self, step, pools_name)
    if point == "after-save" and step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
def path_rename(self, target):
    if point == "between-renames" and swapping[:1] == [True] and self.name == "state.tmp":
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)
Trainer._save_state, Path.rename = save_state, path_rename
from tessera.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("point", ["after-save", "between-renames"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, tiny_bert_dir, point):
    full = Trainer(config(tmp_path / "full", tiny_bert_dir, max_steps=6, save_every=1)).train()
    cfg = config(tmp_path / "killed", tiny_bert_dir, max_steps=6, save_every=1)
    args = ["train", "--out", cfg.out, "--data", cfg.data, "--backbone",
            cfg.backbone, "--dim", "16", "--batch-size", "4", "--negatives", "1", "--negatives-from", "bm25",
            "--max-steps", "6", "--save-every", "1", "--lora-rank", "0", "--doc-maxlen", "32",
            "--query-maxlen", "8", "--lr", "1e-3", "--warmup", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", _KILLING_CHILD, point, *args], capture_output=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    out = Path(cfg.out)
    left = out / ("state" if point == "after-save" else "state.old") / "trainer_state.json"
    assert json.loads(left.read_text())["step"] == 3
    assert not (out / "model" / "projection.safetensors").exists()
    resumed = subprocess.run([sys.executable, "-m", "tessera.cli", *args], capture_output=True, env=env)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert "resuming from step 3" in resumed.stderr.decode()  # a restart from scratch would also match `full`
    wa = load_file(str(full / "projection.safetensors"))["weight"]
    wb = load_file(str(out / "model" / "projection.safetensors"))["weight"]
    torch.testing.assert_close(wa, wb, atol=1e-6, rtol=1e-5)


def test_unlabelled_crops_train_without_qrels(tmp_path, tiny_bert_dir):
    data = make_beir(tmp_path / "data")
    (data / "qrels" / "train.tsv").unlink()
    path = Trainer(config(tmp_path, tiny_bert_dir, data=str(data), pairs="crops", negatives=0)).train()
    assert (path / "tessera.json").is_file()


def test_bad_training_input_is_a_clear_error(tmp_path, tiny_bert_dir):
    with pytest.raises(DataError, match="not found"):
        Trainer(config(tmp_path, tiny_bert_dir, data=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="unknown objective"):
        Trainer(config(tmp_path, tiny_bert_dir, objective="nope"))
    with pytest.raises(DataError, match="no qrels for split"):
        Trainer(config(tmp_path, tiny_bert_dir, split="dev"))


class _Killed(Exception):
    pass


class _DiesAtStep2(Trainer):
    """A run that stops right after step 2's state is saved, as a kill would."""

    def _save_state(self, step, pools_name):
        super()._save_state(step, pools_name)
        if step == 2:
            raise _Killed


OBJECTIVE_FLAGS = {"xtr": {"objective": "xtr", "k_train": 8}, "crisp": {"objective": "crisp", "crisp": "C2x4"}}


@pytest.mark.parametrize("objective", sorted(OBJECTIVE_FLAGS))
def test_objectives_are_seeded_and_resume_where_an_uninterrupted_run_ends(tmp_path, tiny_bert_dir, objective):
    kw = dict(OBJECTIVE_FLAGS[objective], max_steps=4, save_every=1)
    full = Trainer(config(tmp_path / "full", tiny_bert_dir, **kw)).train()
    again = Trainer(config(tmp_path / "again", tiny_bert_dir, **kw)).train()
    cfg = config(tmp_path / "killed", tiny_bert_dir, **kw)
    with pytest.raises(_Killed):
        _DiesAtStep2(cfg).train()
    resumed = Trainer(cfg).train()
    weights = [load_file(str(p / "projection.safetensors"))["weight"] for p in (full, again, resumed)]
    torch.testing.assert_close(weights[1], weights[0])
    torch.testing.assert_close(weights[2], weights[0], atol=1e-6, rtol=1e-5)
    start = Trainer(config(tmp_path / "start", tiny_bert_dir, **kw)).encoder.model.linear.weight
    assert (weights[0] - start).abs().max() > 1e-4  # it trained: equal weights are not trivially equal
    meta = json.loads((full / "tessera.json").read_text())
    assert meta["training"]["objective"] == objective and meta["training"]["max_steps"] == 4


def test_resuming_with_other_settings_is_refused(tmp_path, tiny_bert_dir):
    kw = dict(max_steps=4, save_every=1)
    with pytest.raises(_Killed):
        _DiesAtStep2(config(tmp_path, tiny_bert_dir, **kw)).train()
    with pytest.raises(DataError, match=r"other settings \(lr: 0.001 -> 0.002\).*new --out"):
        Trainer(config(tmp_path, tiny_bert_dir, **kw, lr=2e-3)).train()
    assert json.loads((tmp_path / "out" / "train_config.json").read_text())["lr"] == 1e-3  # kept
    # where and how often it saves may change
    path = Trainer(config(tmp_path, tiny_bert_dir, max_steps=4, save_every=3)).train()
    assert (path / "tessera.json").is_file()


def test_amp_off_cuda_says_so_and_trains_in_fp32(tmp_path, tiny_bert_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="tessera.training.trainer"):
        amp = Trainer(config(tmp_path / "amp", tiny_bert_dir, amp=True)).train()
    assert "--amp applies to CUDA devices only" in caplog.text
    fp32 = Trainer(config(tmp_path / "fp32", tiny_bert_dir)).train()
    a, b = (load_file(str(p / "projection.safetensors"))["weight"] for p in (amp, fp32))
    torch.testing.assert_close(a, b)
