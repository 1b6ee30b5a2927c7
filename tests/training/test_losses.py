"""Training losses against slow, obviously correct references."""

import math

import torch

from tessera.training.losses import colbert_scores, contrastive_loss, distillation_loss
from tessera.training.objectives import Batch
from tessera.training.pairs import Example


def _naive_maxsim(q, d, mask):
    out = torch.zeros(q.shape[0], d.shape[0])
    for i in range(q.shape[0]):
        for j in range(d.shape[0]):
            total = 0.0
            for a in range(q.shape[1]):
                best = max(float(q[i, a] @ d[j, b]) for b in range(d.shape[1]) if mask[j, b])
                total += best
            out[i, j] = total
    return out


def test_colbert_scores_match_naive_loop():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 4, 8, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(5, 6, 8, generator=g), dim=-1)
    mask = torch.rand(5, 6, generator=g) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(colbert_scores(q, d, mask), _naive_maxsim(q, d, mask), rtol=1e-5, atol=1e-5)


def test_contrastive_loss_is_negative_log_softmax_of_positive():
    scores = torch.tensor([[3.0, 1.0, 0.5], [0.2, 2.0, -1.0]])
    target = torch.tensor([0, 1])
    expected = 0.0
    for i, t in enumerate(target.tolist()):
        denom = sum(math.exp(s) for s in scores[i].tolist())
        expected += -math.log(math.exp(scores[i, t].item()) / denom)
    assert abs(contrastive_loss(scores, target).item() - expected / 2) < 1e-6


def test_distillation_loss_is_kl_teacher_to_student():
    scores = torch.tensor([[1.0, 2.0, 0.0, 5.0], [0.0, 0.0, 1.0, 3.0]])
    own = torch.tensor([[0, 1], [2, 3]])
    teacher = torch.tensor([[2.0, 1.0], [0.0, 4.0]])
    expected = 0.0
    for i in range(2):
        s = [scores[i, j].item() for j in own[i].tolist()]
        ps = [math.exp(x) / sum(math.exp(y) for y in s) for x in s]
        pt = [math.exp(x) / sum(math.exp(y) for y in teacher[i].tolist()) for x in teacher[i].tolist()]
        expected += sum(t * math.log(t / p) for t, p in zip(pt, ps, strict=False))
    assert abs(distillation_loss(scores, own, teacher).item() - expected / 2) < 1e-6


def test_batch_forbids_other_copies_of_a_positive():
    a = Example("q1", ["d1", "d2"], ["1", "2"], {"1"})
    b = Example("q2", ["d3", "d1"], ["3", "1"], {"3"})
    batch = Batch.from_examples([a, b])
    assert batch.positive_index.tolist() == [0, 2]
    assert batch.own_docs.tolist() == [[0, 1], [2, 3]]
    # doc "1" appears again at column 3: a positive of q1, so it must not count as q1's negative
    assert batch.forbidden.tolist() == [[False, False, False, True], [False, False, False, False]]


def test_colbert_objective_gradients_reach_projection_and_backbone(tiny_encoder):
    from tessera.training.objectives import ColBERTObjective

    batch = Batch.from_examples(
        [Example("cancer cells", ["cancer cells in mice", "dog"], ["a", "b"], {"a"}),
         Example("a red fish", ["red fish", "blue sun"], ["c", "d"], {"c"})]
    )
    tiny_encoder.model.train()
    tiny_encoder.model.zero_grad()
    loss, logs = ColBERTObjective().loss(tiny_encoder, batch)
    loss.backward()
    assert "ce" in logs and loss.item() > 0
    assert tiny_encoder.model.linear.weight.grad.abs().sum() > 0
    emb = tiny_encoder.model.backbone.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0
