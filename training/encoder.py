"""Multi-vector encoder: a BERT-family backbone, a linear projection, L2-normalised token vectors.

ColBERT conventions: a query marker and a document marker after [CLS]; queries padded with
[MASK] to query_maxlen and every position scored; documents truncated to doc_maxlen with
punctuation and padding dropped. Token ids are kept beside document vectors.

Inference (``encode_queries``, ``encode_documents``) can run the forward pass on another backend
(ONNX Runtime, int8; see ``tessera.training.runtime`` and ``Encoder.set_backend``); training always
uses the torch model.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tessera.packed import PackedDocuments
from tessera.training.config import EncoderConfig


class MultiVectorModel(nn.Module):
    """Backbone + bias-free projection; forward returns L2-normalised [B, L, dim] vectors."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.linear = nn.Linear(hidden, dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.linear(hidden), p=2, dim=-1)


class Encoder:
    """Turns query and document texts into token vectors; used for training and inference."""

    def __init__(self, model: MultiVectorModel, tokenizer, config: EncoderConfig, device: str = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(device)
        self.model.to(self.device)
        vocab = tokenizer.get_vocab()
        for marker in (config.query_marker, config.doc_marker):
            if marker not in vocab:
                raise ValueError(f"marker token {marker!r} is not in the tokenizer's vocabulary")
        self.query_marker_id = vocab[config.query_marker]
        self.doc_marker_id = vocab[config.doc_marker]
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id
        skip: set[int] = set()
        if config.mask_punctuation:
            for sym in string.punctuation:
                ids = tokenizer.encode(sym, add_special_tokens=False)
                if len(ids) == 1:
                    skip.add(ids[0])
        self.skiplist = torch.tensor(sorted(skip), dtype=torch.long)
        # Inference backends of queries and documents (None: the torch model itself, fp32).
        self.query_runner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.doc_runner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    # -- inference backends ---------------------------------------------------------------------
    def set_backend(
        self,
        backend: str = "torch",
        quantize: str | None = None,
        threads: int | None = None,
        *,
        queries: bool = True,
        documents: bool = True,
        cache_dir=None,
    ) -> None:
        """Run inference with ``backend`` ('torch' or 'onnx'), ``quantize`` (None or 'int8') and
        ``threads`` intra-op threads, for queries and/or documents. Training is not affected."""
        from tessera.training.runtime import Runtime

        self.set_runtime(Runtime(backend, quantize, threads), queries=queries, documents=documents,
                         cache_dir=cache_dir)

    def set_runtime(self, runtime, *, queries: bool = True, documents: bool = True, cache_dir=None) -> None:
        """Like ``set_backend`` with a ``tessera.training.runtime.Runtime``."""
        from tessera.training.runtime import make_runner

        runner = None if runtime.is_reference and runtime.threads is None else make_runner(
            self.model, runtime, cache_dir
        )
        if queries:
            self.query_runner = runner
        if documents:
            self.doc_runner = runner

    def backend_name(self, kind: str = "documents") -> str:
        """The backend encoding ``kind`` ('queries' or 'documents'): torch, torch-int8, onnx, onnx-int8."""
        runner = self.query_runner if kind == "queries" else self.doc_runner
        return "torch" if runner is None else runner.name  # type: ignore[attr-defined]

    def _infer(self, runner, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if runner is None:
            return self.model(ids.to(self.device), mask.to(self.device))
        return runner(ids, mask)

    @property
    def dim(self) -> int:
        return self.config.dim

    # -- tokenisation -------------------------------------------------------------------------
    def _tokenize(self, texts: Sequence[str], marker_id: int, maxlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), max_length=maxlen - 1, truncation=True, padding="longest", return_tensors="pt"
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        marker = torch.full((ids.shape[0], 1), marker_id, dtype=ids.dtype)
        ids = torch.cat([ids[:, :1], marker, ids[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], torch.ones_like(marker), mask[:, 1:]], dim=1)
        return ids, mask

    def tokenize_queries(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries padded with [MASK] to exactly query_maxlen tokens."""
        qlen = self.config.query_maxlen
        ids, mask = self._tokenize(texts, self.query_marker_id, qlen)
        if ids.shape[1] < qlen:
            pad = qlen - ids.shape[1]
            ids = F.pad(ids, (0, pad), value=self.pad_id)
            mask = F.pad(mask, (0, pad), value=0)
        ids = ids.masked_fill(mask == 0, self.mask_id)
        if self.config.attend_to_mask_tokens:
            mask = torch.ones_like(mask)
        return ids, mask

    def tokenize_documents(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tokenize(texts, self.doc_marker_id, self.config.doc_maxlen)

    def document_keep_mask(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Positions whose vectors are kept: real tokens that are not punctuation."""
        keep = mask.bool()
        if len(self.skiplist):
            keep &= ~torch.isin(ids, self.skiplist.to(ids.device))
        return keep

    def length_order(self, texts: Sequence[str]) -> list[int]:
        """Indices of ``texts`` sorted by their token count (as truncated for documents), stable."""
        if not texts:
            return []
        lengths = self.tokenizer(
            list(texts), max_length=self.config.doc_maxlen - 1, truncation=True, return_length=True
        )["length"]
        return sorted(range(len(texts)), key=lambda i: lengths[i])

    # -- differentiable forward passes (training) ----------------------------------------------
    def query_forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(ids.to(self.device), mask.to(self.device))

    def document_forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.model(ids, mask), self.document_keep_mask(ids, mask)

    # -- inference ------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[N, query_maxlen, dim] float32 query vectors ([N, clusters, dim] for CRISP models)."""
        self.model.eval()
        out = []
        reduce = getattr(self.model, "reduce_queries", None)  # e.g. CRISP: [B, Lq, dim] -> [B, K, dim]
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenize_queries(texts[i : i + batch_size])
            q = self._infer(self.query_runner, ids, mask)
            out.append((reduce(q) if reduce is not None else q).float().cpu())
        if not out:
            return torch.empty(0, self.config.query_maxlen, self.dim)
        return torch.cat(out)

    @torch.inference_mode()
    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool | None = None, desc: str = "encoding"
    ) -> PackedDocuments:
        """Token vectors (fp16) of every document, in input order.

        Length bucketing: documents are sorted by token count so that each batch pads little (the
        order is restored at the end)."""
        self.model.eval()
        texts = list(texts)
        n = len(texts)
        order = self.length_order(texts)
        vecs: list[torch.Tensor | None] = [None] * n
        toks: list[torch.Tensor | None] = [None] * n
        show = progress if progress is not None else n >= 500
        bar = tqdm(total=n, desc=desc, unit="doc", disable=not show, dynamic_ncols=True)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            ids, mask = self.tokenize_documents([texts[j] for j in idx])
            emb = self._infer(self.doc_runner, ids, mask)
            keep = self.document_keep_mask(ids.to(emb.device), mask.to(emb.device))
            emb, keep, ids = emb.float().cpu(), keep.cpu(), ids.cpu()
            reduce = getattr(self.model, "reduce_documents", None)
            for row, j in enumerate(idx):
                v, t = emb[row][keep[row]], ids[row][keep[row]].to(torch.int32)
                if reduce is not None:
                    v, t = reduce(v, t)
                vecs[j], toks[j] = v.half(), t
            bar.update(len(idx))
        bar.close()
        if n == 0:
            return PackedDocuments(
                torch.empty(0, self.dim, dtype=torch.float16),
                torch.empty(0, dtype=torch.int32),
                torch.empty(0, dtype=torch.long),
            )
        return PackedDocuments(
            torch.cat(vecs),  # type: ignore[arg-type]
            torch.cat(toks),  # type: ignore[arg-type]
            torch.tensor([v.shape[0] for v in vecs], dtype=torch.long),  # type: ignore[union-attr]
        )
