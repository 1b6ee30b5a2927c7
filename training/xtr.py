"""XTR (Lee et al., 2023, "Rethinking the Role of Token Retrieval in Multi-Vector Retrieval").

Training simulates token retrieval inside the batch: each query token retrieves its top ``k_train``
document tokens among all documents' tokens in the batch. A query-document score sums, over query
tokens, the best similarity among that document's retrieved tokens (0 when none was retrieved),
divided by the number of query tokens that retrieved at least one of its tokens (at least 1).
Cross-entropy over the in-batch documents then teaches the model to score well from retrieved
tokens alone, which is how the index's ``xtr`` method scores.
"""

from __future__ import annotations

import torch

from tessera.training.encoder import Encoder
from tessera.training.objectives import Batch, ColBERTObjective


def xtr_scores(q: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor, k_train: int) -> torch.Tensor:
    """[B, Lq, dim] queries, [N, Ld, dim] documents with mask [N, Ld] -> [B, N] XTR training scores.

    The retrieval mask is computed without gradient; gradients reach only retrieved tokens.
    """
    b, lq, dim = q.shape
    n, ld, _ = d.shape
    sim = (q.reshape(b * lq, dim) @ d.reshape(n * ld, dim).T).view(b, lq, n * ld)
    valid = d_mask.reshape(1, 1, n * ld)
    with torch.no_grad():
        k = min(int(k_train), int(d_mask.sum()))
        retrieved = torch.zeros_like(sim, dtype=torch.bool)
        if k > 0:
            top = sim.detach().masked_fill(~valid, float("-inf")).topk(k, dim=-1).indices
            retrieved.scatter_(-1, top, True)
        retrieved = (retrieved & valid).view(b, lq, n, ld)
        hit = retrieved.any(-1)  # [B, Lq, N]: the query token retrieved something of the document
        z = hit.sum(1).clamp(min=1)  # [B, N]
    best = sim.view(b, lq, n, ld).masked_fill(~retrieved, float("-inf")).max(-1).values
    best = best.masked_fill(~hit, 0.0)
    return best.sum(1) / z.to(best.dtype)


class XTRObjective(ColBERTObjective):
    """Softmax cross-entropy over in-batch documents on XTR scores (divided by a temperature, since
    the normalised scores lie in [-1, 1]); optional KL distillation as for ColBERT."""

    name = "xtr"
    options = {"k_train": "k_train", "temperature": "xtr_temperature", "distill_weight": "distill_weight"}

    def __init__(self, k_train: int = 128, temperature: float = 0.05, distill_weight: float = 1.0) -> None:
        super().__init__(distill_weight)
        if k_train < 1:
            raise ValueError(f"k_train must be at least 1, got {k_train}")
        if temperature <= 0:
            raise ValueError(f"the XTR temperature must be positive, got {temperature}")
        self.k_train = k_train
        self.temperature = temperature

    def scores(self, encoder: Encoder, batch: Batch) -> torch.Tensor:
        q_ids, q_mask = encoder.tokenize_queries(batch.queries)
        d_ids, d_mask = encoder.tokenize_documents(batch.docs)
        q = encoder.query_forward(q_ids, q_mask)
        d, keep = encoder.document_forward(d_ids, d_mask)
        return xtr_scores(q, d, keep, self.k_train) / self.temperature
