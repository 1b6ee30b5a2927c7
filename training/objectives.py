"""Training objectives. Each turns a batch of examples into a loss; the trainer is shared."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tessera.training.encoder import Encoder
from tessera.training.losses import colbert_scores, contrastive_loss, distillation_loss
from tessera.training.pairs import Example


@dataclass
class Batch:
    """Queries, their documents flattened (each query's positive first), and the label structure."""

    queries: list[str]
    docs: list[str]
    doc_ids: list[str]
    positive_index: torch.Tensor  # [B] column of each query's positive
    own_docs: torch.Tensor  # [B, G] columns of each query's own documents
    forbidden: torch.Tensor  # [B, N] True where a column holds another copy of one of the query's positives
    teacher: torch.Tensor | None  # [B, G]

    @classmethod
    def from_examples(cls, examples: list[Example]) -> Batch:
        docs, ids, pos, own = [], [], [], []
        for ex in examples:
            pos.append(len(docs))
            own.append(list(range(len(docs), len(docs) + len(ex.docs))))
            docs.extend(ex.docs)
            ids.extend(ex.doc_ids)
        forbidden = torch.zeros(len(examples), len(docs), dtype=torch.bool)
        for i, ex in enumerate(examples):
            for j, d in enumerate(ids):
                if j != pos[i] and d in ex.positives:
                    forbidden[i, j] = True
        teacher = None
        if all(ex.teacher is not None for ex in examples) and examples:
            teacher = torch.tensor([ex.teacher for ex in examples], dtype=torch.float32)
        return cls([ex.query for ex in examples], docs, ids, torch.tensor(pos), torch.tensor(own), forbidden,
                   teacher)


class ColBERTObjective:
    """Late interaction (MaxSim) with softmax cross-entropy over the positive, the hard negatives and
    in-batch negatives; optional KL distillation from teacher scores."""

    name = "colbert"
    # constructor argument -> TrainConfig field it is read from
    options = {"distill_weight": "distill_weight"}

    def __init__(self, distill_weight: float = 1.0) -> None:
        self.distill_weight = distill_weight

    def scores(self, encoder: Encoder, batch: Batch) -> torch.Tensor:
        q_ids, q_mask = encoder.tokenize_queries(batch.queries)
        d_ids, d_mask = encoder.tokenize_documents(batch.docs)
        q = encoder.query_forward(q_ids, q_mask)
        d, keep = encoder.document_forward(d_ids, d_mask)
        return colbert_scores(q, d, keep)

    def loss(self, encoder: Encoder, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.scores(encoder, batch)
        scores = scores.masked_fill(batch.forbidden.to(scores.device), float("-inf"))
        ce = contrastive_loss(scores, batch.positive_index.to(scores.device))
        logs = {"ce": ce.item()}
        loss = ce
        if batch.teacher is not None and self.distill_weight > 0:
            kl = distillation_loss(scores, batch.own_docs.to(scores.device), batch.teacher.to(scores.device))
            logs["kl"] = kl.item()
            loss = loss + self.distill_weight * kl
        return loss, logs


# name -> "module:Class", imported on use (the objective modules import this one)
OBJECTIVES = {
    "colbert": "tessera.training.objectives:ColBERTObjective",
    "xtr": "tessera.training.xtr:XTRObjective",
    "crisp": "tessera.training.crisp:CRISPObjective",
    "dupmae": "tessera.training.dupmae:DupMAEObjective",
    "dense": "tessera.training.dupmae:DenseObjective",
}


def get_objective(name: str) -> type:
    """The objective class registered under ``name``."""
    import importlib

    module, _, attr = OBJECTIVES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
