"""Training losses for late-interaction models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.scoring import maxsim_padded


def colbert_scores(q: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """All-pairs MaxSim between [B, Lq, dim] queries and [N, Ld, dim] documents -> [B, N]."""
    return maxsim_padded(q, d, d_mask)


def contrastive_loss(scores: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy: each query's positive against every other document in the batch
    (its own hard negatives and every other query's documents: in-batch negatives)."""
    return F.cross_entropy(scores, positive_index)


def distillation_loss(
    scores: torch.Tensor, own_docs: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) over each query's own documents.

    scores [B, N] (student, all pairs), own_docs [B, G] indices of each query's documents,
    teacher [B, G] teacher scores for those documents.
    """
    student = scores.gather(1, own_docs) / temperature
    return F.kl_div(
        F.log_softmax(student, dim=-1), F.log_softmax(teacher / temperature, dim=-1), log_target=True,
        reduction="batchmean",
    )
