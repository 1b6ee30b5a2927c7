"""CRISP (Veneroso et al., 2025): multi-vector models trained with clustering inside the forward pass.

Each query's and each document's token vectors are grouped by a few Lloyd (k-means) iterations; a
cluster's representative is the mean of its members. Assignments are computed without gradient, the
means with it, so training shapes the token vectors to cluster well. MaxSim between representatives
is trained with the ColBERT loss, and at indexing a CRISP model stores only the representatives.

Variants: ``C4x8`` (4 query and 8 document clusters), ``C8x32``, ``C0x8`` (queries not clustered),
``R0.25`` (a quarter of each text's tokens, queries and documents) and ``R0.25x0.5``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from tessera.errors import DataError
from tessera.packed import PackedDocuments
from tessera.training.config import EncoderConfig
from tessera.training.encoder import Encoder, MultiVectorModel
from tessera.training.losses import colbert_scores
from tessera.training.objectives import Batch, ColBERTObjective

_FIXED = re.compile(r"^C(\d+)x(\d+)$", re.IGNORECASE)
_RELATIVE = re.compile(r"^R(\d*\.?\d+)(?:x(\d*\.?\d+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class ClusterSpec:
    """How many representatives a text of n tokens keeps, per side (None: the side is not clustered)."""

    query_count: int | None = None
    doc_count: int | None = None
    query_ratio: float | None = None
    doc_ratio: float | None = None
    iters: int = 4

    @classmethod
    def parse(cls, variant: str, iters: int = 4) -> ClusterSpec:
        """``C{q}x{d}`` fixed counts (0: that side unclustered) or ``R{f}`` / ``R{fq}x{fd}`` fractions."""
        m = _FIXED.match(variant.strip())
        if m:
            q, d = int(m.group(1)), int(m.group(2))
            if d == 0:
                raise DataError(f"CRISP variant {variant!r}: documents need at least one cluster")
            return cls(query_count=q or None, doc_count=d, iters=iters)
        m = _RELATIVE.match(variant.strip())
        if m:
            fq = float(m.group(1))
            fd = float(m.group(2)) if m.group(2) else fq
            for f in (fq, fd):
                if not 0 < f <= 1:
                    raise DataError(f"CRISP variant {variant!r}: fractions must lie in (0, 1]")
            return cls(query_ratio=fq, doc_ratio=fd, iters=iters)
        raise DataError(f"unknown CRISP variant {variant!r} (use e.g. C4x8, C8x32, R0.25 or R0.25x0.5)")

    @classmethod
    def from_config(cls, config: EncoderConfig) -> ClusterSpec:
        return cls(config.query_clusters, config.doc_clusters, config.query_cluster_ratio,
                   config.doc_cluster_ratio, config.cluster_iters)

    def apply(self, config: EncoderConfig) -> EncoderConfig:
        return replace(config, query_clusters=self.query_count, doc_clusters=self.doc_count,
                       query_cluster_ratio=self.query_ratio, doc_cluster_ratio=self.doc_ratio,
                       cluster_iters=self.iters)

    def clusters(self, n_tokens: torch.Tensor, side: str) -> torch.Tensor | None:
        """Clusters per text for texts of ``n_tokens`` tokens (never more than the tokens), or None."""
        if side == "query":
            count, ratio = self.query_count, self.query_ratio
        else:
            count, ratio = self.doc_count, self.doc_ratio
        if ratio is not None:
            k = torch.ceil(n_tokens.double() * ratio).long()
        elif count is not None:
            k = torch.full_like(n_tokens, count)
        else:
            return None
        return torch.minimum(k, n_tokens).clamp(min=0)


@torch.no_grad()
def kmeans_assign(x: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd's k-means on each row's valid vectors -> cluster index per position [B, L] (-1: invalid).

    x [B, L, dim], valid [B, L] bool, k [B] clusters per row (at most the row's valid count).
    Deterministic: centroids start at evenly spaced valid tokens; an empty cluster keeps its centroid.
    """
    with torch.autocast(x.device.type, enabled=False):  # distances in fp32 even under mixed precision
        return _kmeans_assign(x, valid, k, iters)


def _kmeans_assign(x: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, iters: int) -> torch.Tensor:
    b, length, _ = x.shape
    x = x.detach().float()
    n = valid.sum(1)
    k = torch.minimum(k.to(n.device), n)
    slots = max(1, int(k.max())) if b else 1
    slot = torch.arange(slots, device=x.device)
    slot_ok = slot[None] < k[:, None]  # [B, K]
    # initial centroids: valid tokens of rank floor(j * n / k), j < k
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid positions first, in order
    rank = torch.div(slot[None] * n[:, None], k.clamp(min=1)[:, None], rounding_mode="floor")
    rank = torch.minimum(rank, (n - 1).clamp(min=0)[:, None])
    idx = order.gather(1, rank.clamp(max=length - 1))
    cent = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # [B, K, dim]
    for step in range(iters + 1):
        # nearest centroid in Euclidean distance: argmax of 2<x, c> - |c|^2
        score = 2 * torch.einsum("bld,bkd->blk", x, cent) - (cent * cent).sum(-1)[:, None, :]
        assign = score.masked_fill(~slot_ok[:, None, :], float("-inf")).argmax(-1)
        if step == iters:
            break
        onehot = F.one_hot(assign, slots).to(x.dtype) * valid[..., None]
        counts = onehot.sum(1)  # [B, K]
        sums = torch.einsum("blk,bld->bkd", onehot, x)
        cent = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], cent)
    return assign.masked_fill(~valid, -1)


def cluster_means(x: torch.Tensor, assign: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Representatives [B, K, dim] (means of members, differentiable in ``x``) and their mask [B, K]
    (False for empty clusters; their vectors are zero)."""
    onehot = F.one_hot(assign.clamp(min=0), slots).to(x.dtype) * (assign >= 0)[..., None].to(x.dtype)
    counts = onehot.sum(1)
    reps = torch.einsum("blk,bld->bkd", onehot, x) / counts.clamp(min=1)[..., None]
    return reps, counts > 0


def cluster(x: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, iters: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means representatives of each row's valid vectors: ([B, K, dim], mask [B, K])."""
    assign = kmeans_assign(x, valid, k, iters)
    slots = max(1, int(k.max())) if len(k) else 1
    return cluster_means(x, assign, slots)


def cluster_query_vectors(q: torch.Tensor, spec: ClusterSpec, iters: int | None = None) -> torch.Tensor:
    """[B, Lq, dim] -> [B, K, dim] representatives (every query position is scored, as in ColBERT;
    empty slots are zero vectors, which add nothing to MaxSim); unchanged when queries are not clustered."""
    valid = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
    k = spec.clusters(valid.sum(1), "query")
    if k is None:
        return q
    reps, mask = cluster(q, valid, k, spec.iters if iters is None else iters)
    return reps * mask[..., None].to(reps.dtype)


class CRISPModel(MultiVectorModel):
    """A multi-vector model whose queries and documents are reduced to cluster representatives."""

    def __init__(self, backbone, dim: int, spec: ClusterSpec) -> None:
        super().__init__(backbone, dim)
        self.spec = spec

    @classmethod
    def wrap(cls, model: MultiVectorModel, spec: ClusterSpec) -> CRISPModel:
        """Share an existing model's backbone and projection."""
        out = cls(model.backbone, model.linear.out_features, spec)
        out.linear = model.linear
        return out

    def cluster_queries(self, q: torch.Tensor) -> torch.Tensor:
        """[B, Lq, dim] -> [B, K, dim] representatives (see ``cluster_query_vectors``)."""
        return cluster_query_vectors(q, self.spec)

    def cluster_documents(self, d: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.spec.clusters(keep.sum(1), "doc")
        if k is None:
            return d, keep
        return cluster(d, keep, k, self.spec.iters)

    # -- inference hooks (Encoder.encode_queries / encode_documents) -----------------------------
    def reduce_queries(self, q: torch.Tensor) -> torch.Tensor:
        return self.cluster_queries(q)

    def reduce_documents(self, vectors: torch.Tensor, token_ids: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """One document's kept vectors [n, dim] -> its representatives; their token id is -1."""
        if vectors.shape[0] == 0:
            return vectors, token_ids
        keep = torch.ones(1, vectors.shape[0], dtype=torch.bool, device=vectors.device)
        reps, mask = self.cluster_documents(vectors[None], keep)
        reps = reps[0][mask[0]]
        return reps, torch.full((reps.shape[0],), -1, dtype=torch.int32, device=token_ids.device)


class CRISPObjective(ColBERTObjective):
    """ColBERT loss on MaxSim between k-means representatives of queries and documents."""

    name = "crisp"
    options = {"variant": "crisp", "iters": "cluster_iters", "distill_weight": "distill_weight"}

    def __init__(self, variant: str = "C4x8", iters: int = 4, distill_weight: float = 1.0) -> None:
        super().__init__(distill_weight)
        self.spec = ClusterSpec.parse(variant, iters)

    def configure(self, config: EncoderConfig) -> EncoderConfig:
        return self.spec.apply(config)

    def prepare(self, encoder: Encoder) -> Encoder:
        """Turn any multi-vector encoder (e.g. an ``--init`` ColBERT checkpoint) into this variant."""
        if not isinstance(encoder.model, MultiVectorModel):
            raise DataError("--objective crisp needs a multi-vector model to start from")
        encoder.config = self.spec.apply(encoder.config)
        if not isinstance(encoder.model, CRISPModel) or encoder.model.spec != self.spec:
            encoder.model = CRISPModel.wrap(encoder.model, self.spec)
        return encoder

    def scores(self, encoder: Encoder, batch: Batch) -> torch.Tensor:
        model = encoder.model
        q_ids, q_mask = encoder.tokenize_queries(batch.queries)
        d_ids, d_mask = encoder.tokenize_documents(batch.docs)
        q = model.cluster_queries(encoder.query_forward(q_ids, q_mask))
        d, keep = encoder.document_forward(d_ids, d_mask)
        d, keep = model.cluster_documents(d, keep)
        return colbert_scores(q, d, keep)


def posthoc_kmeans(vectors: torch.Tensor, k: int, iters: int = 4) -> torch.Tensor:
    """Post-hoc baseline: one document's vectors [n, dim] replaced by at most k k-means means."""
    n = vectors.shape[0]
    if n == 0:
        return vectors
    k_t = torch.tensor([min(k, n)], device=vectors.device)
    valid = torch.ones(1, n, dtype=torch.bool, device=vectors.device)
    reps, mask = cluster(vectors[None].float(), valid, k_t, iters)
    return reps[0][mask[0]]


def posthoc_documents(docs: PackedDocuments, spec: ClusterSpec, iters: int | None = None, batch: int = 256
                      ) -> PackedDocuments:
    """Post-hoc baseline: each document's stored vectors replaced by k-means representatives, as many as
    a CRISP model with ``spec`` keeps for a document of that length (the same clustering code, applied
    after training to an unclustered model's vectors). Representatives are fp16 with token id -1."""
    iters = spec.iters if iters is None else iters
    vecs, lens = [], []
    for start in range(0, len(docs), batch):
        x, valid = docs.padded(start, min(start + batch, len(docs)))
        k = spec.clusters(valid.sum(1), "doc")
        if k is None:
            raise DataError("post-hoc clustering needs a variant that clusters documents (e.g. C4x8, R0.25)")
        if x.shape[1] == 0:  # only empty documents in this batch
            lens.append(torch.zeros(x.shape[0], dtype=torch.long))
            continue
        reps, mask = cluster(x, valid, k, iters)
        vecs.append(reps[mask])
        lens.append(mask.sum(1))
    if not lens:
        return docs
    out = torch.cat(vecs).half() if vecs else docs.vectors[:0]
    return PackedDocuments(out, torch.full((out.shape[0],), -1, dtype=torch.int32), torch.cat(lens).long())
