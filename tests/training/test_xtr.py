"""XTR training scores against a slow reference, gradient flow, and a tiny end-to-end run."""

import argparse

import pytest
import torch
import torch.nn.functional as F
from test_trainer import config as train_config

from tessera.training.checkpoints import load_encoder
from tessera.training.losses import colbert_scores
from tessera.training.objectives import Batch
from tessera.training.pairs import Example
from tessera.training.trainer import Trainer
from tessera.training.xtr import XTRObjective, xtr_scores


def _data(seed=0, b=3, lq=4, n=5, ld=6, dim=8):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, lq, dim, generator=g), dim=-1)
    d = F.normalize(torch.randn(n, ld, dim, generator=g), dim=-1)
    mask = torch.rand(n, ld, generator=g) > 0.3
    mask[:, 0] = True
    return q, d, mask


def _retrieved(q, d, mask, k):
    """{(i, a): set of (j, b)} the top-k valid document tokens of each query token, by brute force."""
    out = {}
    for i in range(q.shape[0]):
        for a in range(q.shape[1]):
            cands = [(float(q[i, a] @ d[j, b]), j, b) for j in range(d.shape[0]) for b in range(d.shape[1])
                     if mask[j, b]]
            cands.sort(reverse=True)
            out[i, a] = {(j, b) for _, j, b in cands[:k]}
    return out


def _naive_xtr(q, d, mask, k):
    ret = _retrieved(q, d, mask, k)
    out = torch.zeros(q.shape[0], d.shape[0])
    for i in range(q.shape[0]):
        for j in range(d.shape[0]):
            total, z = 0.0, 0
            for a in range(q.shape[1]):
                sims = [float(q[i, a] @ d[j, b]) for (jj, b) in ret[i, a] if jj == j]
                if sims:
                    total += max(sims)
                    z += 1
            out[i, j] = total / max(z, 1)
    return out


@pytest.mark.parametrize("k", [1, 3, 10, 1000])
def test_xtr_scores_match_naive_loop(k):
    q, d, mask = _data()
    torch.testing.assert_close(xtr_scores(q, d, mask, k), _naive_xtr(q, d, mask, k), rtol=1e-5, atol=1e-6)


def test_retrieving_every_token_gives_maxsim_over_query_length():
    q, d, mask = _data(seed=1)
    torch.testing.assert_close(xtr_scores(q, d, mask, 10_000), colbert_scores(q, d, mask) / q.shape[1])


def test_documents_nothing_retrieved_score_zero_without_nan():
    q, d, mask = _data(seed=2)
    q = q.clone()
    q[..., 0] = -q[..., 0].abs()  # every query token points away from e0 ...
    q = F.normalize(q, dim=-1).requires_grad_(True)
    d = d.clone()
    d[4] = F.one_hot(torch.tensor(0), d.shape[-1]).float()  # ... where every token of document 4 lies
    d.requires_grad_(True)
    scores = xtr_scores(q, d, mask, 1)
    ret = _retrieved(q.detach(), d.detach(), mask, 1)
    assert not any(j == 4 for toks in ret.values() for j, _ in toks)
    assert (scores[:, 4] == 0).all()
    scores.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(d.grad).all()


def test_gradients_reach_only_retrieved_document_tokens():
    q, d, mask = _data(seed=3)
    d = d.clone().requires_grad_(True)
    q = q.clone().requires_grad_(True)
    xtr_scores(q, d, mask, 3).sum().backward()
    ret = _retrieved(q.detach(), d.detach(), mask, 3)
    used = {t for toks in ret.values() for t in toks}
    for j in range(d.shape[0]):
        for b in range(d.shape[1]):
            nonzero = bool(d.grad[j, b].abs().sum() > 0)
            assert nonzero == ((j, b) in used), (j, b)
    assert q.grad.abs().sum() > 0


def test_xtr_objective_gradients_reach_projection_and_backbone(tiny_encoder):
    batch = Batch.from_examples(
        [Example("cancer cells", ["cancer cells in mice", "dog"], ["a", "b"], {"a"}),
         Example("a red fish", ["red fish", "blue sun"], ["c", "d"], {"c"})]
    )
    tiny_encoder.model.train()
    loss, logs = XTRObjective(k_train=8).loss(tiny_encoder, batch)
    loss.backward()
    assert torch.isfinite(loss) and "ce" in logs
    assert tiny_encoder.model.linear.weight.grad.abs().sum() > 0
    assert tiny_encoder.model.backbone.get_input_embeddings().weight.grad.abs().sum() > 0


def test_bad_xtr_parameters_are_rejected():
    with pytest.raises(ValueError, match="k_train"):
        XTRObjective(k_train=0)
    with pytest.raises(ValueError, match="temperature"):
        XTRObjective(temperature=0)


def test_xtr_training_end_to_end_reloads(tmp_path, tiny_bert_dir):
    cfg = train_config(tmp_path, tiny_bert_dir, objective="xtr", k_train=16, max_steps=3)
    trainer = Trainer(cfg)
    assert isinstance(trainer.objective, XTRObjective) and trainer.objective.k_train == 16
    path = trainer.train()
    loaded = load_encoder(str(path))
    q = ["what about red fish"]
    torch.testing.assert_close(loaded.encode_queries(q), trainer.encoder.encode_queries(q),
                               atol=1e-5, rtol=1e-4)


def test_cli_offers_the_new_objectives_and_their_options():
    from tessera.training import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--out", "x", "--objective", "xtr", "--k-train", "32",
                              "--crisp", "C8x32"])
    assert (args.objective, args.k_train, args.crisp) == ("xtr", 32, "C8x32")
    for name in ("crisp", "dupmae", "dense"):
        assert parser.parse_args(["train", "--out", "x", "--objective", name]).objective == name


def test_xtr_loss_runs_under_bf16_autocast(tiny_encoder):
    """Mixed precision (``--amp`` on CUDA autocasts to bf16); CPU autocast exercises the same casts."""
    batch = Batch.from_examples([Example("cancer cells", ["cancer cells in mice", "dog"], ["a", "b"], {"a"}),
                                 Example("a red fish", ["red fish", "blue sun"], ["c", "d"], {"c"})])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = XTRObjective(k_train=8).loss(tiny_encoder, batch)
    loss.backward()
    assert torch.isfinite(loss) and tiny_encoder.model.linear.weight.grad.abs().sum() > 0
