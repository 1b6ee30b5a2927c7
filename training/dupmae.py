"""DupMAE (Liu et al., 2023): pre-training a retriever on unlabelled text, and its dense model.

Pre-training (``--objective dupmae``) adds three losses on each text:

- encoder masked-LM: 30% of the ordinary (non-special) tokens masked (BERT's 80/10/10 replacement);
- enhanced decoding (RetroMAE): one extra transformer layer reconstructs every ordinary token from the
  encoder's [CLS] embedding. Its queries are the [CLS] embedding plus each position's embedding; its
  keys and values are the [CLS] embedding (position 0) and the unmasked token embeddings, and each
  position sees its own random half of the other tokens (position-specific attention masks);
- bag of words (weight 0.1): the encoder's MLM-head logits over ordinary tokens, max-pooled across the
  sequence and log-softmaxed over the vocabulary, against the uniform distribution over the text's
  distinct ordinary token ids.

The model (``kind="dupmae"``) represents a text by one dense vector: its [CLS] embedding projected to
``dim``, concatenated with the pooled vocabulary vector reduced to ``bow_dim``: log(1 + relu(.)) of its
``bow_topk`` largest entries, each added into a fixed hashed bucket of its token id. Texts are compared
by inner product. Fine-tune it with ``--objective dense`` (contrastive, in-batch negatives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tessera.errors import DataError, ModelError
from tessera.training.config import EncoderConfig
from tessera.training.objectives import Batch, ColBERTObjective

_HASH = 0x9E3779B1  # Knuth's multiplicative hash constant


def hash_buckets(token_ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """Fixed bucket of each vocabulary id (a multiplicative hash, so neighbouring ids spread)."""
    return (token_ids.long() * _HASH % (1 << 32)) % buckets


def bow_vector(pooled: torch.Tensor, topk: int, buckets: int) -> torch.Tensor:
    """[B, V] pooled vocabulary logits -> [B, buckets]: log(1 + relu) of the top-k entries, hashed."""
    values = torch.log1p(torch.relu(pooled))
    top = values.topk(min(topk, values.shape[1]), dim=1)
    out = torch.zeros(values.shape[0], buckets, dtype=values.dtype, device=values.device)
    return out.scatter_add(1, hash_buckets(top.indices, buckets), top.values)


def split_head(head: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear] | None:
    """A masked-LM head as (transform, vocabulary decoder), for BERT- and RoBERTa-style heads; else None."""
    pred = getattr(head, "predictions", None)  # BertOnlyMLMHead
    if pred is not None and isinstance(getattr(pred, "decoder", None), nn.Linear) and hasattr(pred, "transform"):
        return pred.transform, pred.decoder
    if all(isinstance(getattr(head, n, None), nn.Module) for n in ("dense", "layer_norm", "decoder")):  # RoBERTa
        return (lambda x: head.layer_norm(F.gelu(head.dense(x)))), head.decoder
    return None


def max_pool(logits: torch.Tensor, ordinary: torch.Tensor) -> torch.Tensor:
    """[B, L, V] logits max-pooled over each row's ordinary positions -> [B, V] (0 for rows with none)."""
    pooled = logits.masked_fill(~ordinary[..., None], float("-inf")).max(1).values
    return pooled.masked_fill(~ordinary.any(1)[:, None], 0.0)


# -- pre-training losses ---------------------------------------------------------------------------
def mlm_mask(ids: torch.Tensor, ordinary: torch.Tensor, ratio: float, mask_id: int, vocab_size: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ordinary positions: (input ids, labels with -100 where nothing is predicted)."""
    chosen = (torch.rand(ids.shape, device=ids.device) < ratio) & ordinary
    labels = ids.masked_fill(~chosen, -100)
    r = torch.rand(ids.shape, device=ids.device)
    out = ids.masked_fill(chosen & (r < 0.8), mask_id)
    swap = chosen & (r >= 0.8) & (r < 0.9)
    return torch.where(swap, torch.randint_like(ids, vocab_size), out), labels


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions (0 when there are none)."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                         reduction="sum")
    return ce / (labels != -100).sum().clamp(min=1)


def bow_target(ids: torch.Tensor, ordinary: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] uniform distribution over each row's distinct ordinary token ids (zero rows for none)."""
    hits = torch.zeros(ids.shape[0], vocab_size, device=ids.device)
    hits = hits.scatter_reduce(1, ids.long(), ordinary.float(), reduce="amax")
    return hits / hits.sum(1, keepdim=True).clamp(min=1)


def bow_loss(logits: torch.Tensor, ordinary: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the uniform distribution over the input's ordinary token ids and the
    log-softmax of the MLM logits max-pooled over ordinary positions (mean over rows that have any)."""
    target = bow_target(ids, ordinary, logits.shape[-1])
    logp = F.log_softmax(max_pool(logits.float(), ordinary), dim=-1)
    rows = ordinary.any(1)
    per_row = -(target * logp).sum(-1)
    return per_row[rows].sum() / rows.sum().clamp(min=1)


def decoder_visibility(valid: torch.Tensor, ordinary: torch.Tensor, ratio: float) -> torch.Tensor:
    """[B, L, L] bool: position i may attend to position j. Each row hides ``ratio`` of the ordinary
    tokens at random and always its own position; special tokens stay visible, padding never is, and
    position 0 (the [CLS] embedding) is always visible."""
    b, length = valid.shape
    r = torch.rand(b, length, length, device=valid.device)
    vis = valid[:, None, :] & (~ordinary[:, None, :] | (r >= ratio))
    vis &= ~torch.eye(length, dtype=torch.bool, device=valid.device)[None]
    vis[:, :, 0] = True
    return vis


class EnhancedDecoder(nn.Module):
    """One transformer layer whose query stream differs from its key/value stream (post-LN, as BERT)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float = 0.1,
                 eps: float = 1e-12) -> None:
        super().__init__()
        self.heads = heads
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden))
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        blocked = (~visible).repeat_interleave(self.heads, dim=0)  # [B * heads, L, L]
        a = self.attn(query, keys, keys, attn_mask=blocked, need_weights=False)[0]
        h = self.norm1(query + self.drop(a))
        return self.norm2(h + self.drop(self.ffn(h)))


# -- the dense model ----------------------------------------------------------------------------------
class DupMAEModel(nn.Module):
    """A masked-LM backbone (e.g. BertForMaskedLM) + a bias-free [CLS] projection ``linear``."""

    # LoRA wraps only the encoder layers; the MLM head is trained in full and saved as extra state.
    lora_targets = r".*\.layer\.\d+\..*(query|key|value|dense)"

    def __init__(self, backbone: nn.Module, config: EncoderConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.linear = nn.Linear(backbone.config.hidden_size, config.dim, bias=False)
        self.bow_dim = config.bow_dim
        self.bow_topk = config.bow_topk
        self.head()  # fail early without an MLM head

    def core(self) -> nn.Module:
        """The masked-LM model (under a PEFT wrapper during LoRA training)."""
        m = self.backbone
        return m.get_base_model() if hasattr(m, "peft_config") else m

    def body(self) -> nn.Module:
        return self.core().base_model

    def head(self) -> nn.Module:
        core = self.core()
        for name in ("cls", "lm_head"):
            if isinstance(getattr(core, name, None), nn.Module):
                return getattr(core, name)
        raise ModelError(f"{type(core).__name__} has no masked-LM head (cls or lm_head); DupMAE needs a "
                         "BERT- or RoBERTa-style masked-LM model")

    def encode_hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.body()(input_ids=ids, attention_mask=mask).last_hidden_state

    def represent(self, hidden: torch.Tensor, ordinary: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """[B, L, H] hidden states -> [B, dim + bow_dim] vectors (logits ``chunk`` rows at a time)."""
        cls = self.linear(hidden[:, 0]).float()
        if self.bow_dim <= 0:
            return cls
        split = split_head(self.head())
        if torch.is_grad_enabled() and hidden.requires_grad and split is not None:
            bow = self._bow_selected(hidden, ordinary, chunk, *split)
        else:
            head = self.head()
            pooled = torch.cat([max_pool(head(hidden[i : i + chunk]).float(), ordinary[i : i + chunk])
                                for i in range(0, hidden.shape[0], chunk)])
            bow = bow_vector(pooled, self.bow_topk, self.bow_dim)
        return torch.cat([cls, bow], dim=1)

    def _bow_selected(self, hidden: torch.Tensor, ordinary: torch.Tensor, chunk: int,
                      transform: Callable[[torch.Tensor], torch.Tensor], decoder: nn.Linear) -> torch.Tensor:
        """``bow_vector(max_pool(head(hidden)))`` with the same value and gradient at a fraction of the cost.

        Max-pooling and top-k keep one (position, vocabulary id) logit per kept entry and the gradient
        reaches only those. So the full [B, L, V] logits are computed without autograd, only to find the
        ``bow_topk`` winners, and just those B x topk logits are recomputed with it (ties aside).
        """
        with torch.no_grad():
            head = self.head()
            best, where = [], []
            for i in range(0, hidden.shape[0], chunk):
                logits = head(hidden[i : i + chunk]).float()
                top = logits.masked_fill(~ordinary[i : i + chunk, :, None], float("-inf")).max(1)
                best.append(top.values)
                where.append(top.indices)
            pooled, position = torch.cat(best), torch.cat(where)
            has_any = ordinary.any(1)
            pooled = pooled.masked_fill(~has_any[:, None], 0.0)
            vocab_ids = torch.log1p(torch.relu(pooled)).topk(min(self.bow_topk, pooled.shape[1]), dim=1).indices
            rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
            chosen = position[rows, vocab_ids]  # [B, k] positions
        states = transform(hidden[rows, chosen])  # [B, k, H]
        logit = (states * decoder.weight[vocab_ids]).sum(-1)
        if decoder.bias is not None:
            logit = logit + decoder.bias[vocab_ids]
        values = torch.log1p(torch.relu(logit.float())).masked_fill(~has_any[:, None], 0.0)
        out = torch.zeros(hidden.shape[0], self.bow_dim, dtype=values.dtype, device=values.device)
        return out.scatter_add(1, hash_buckets(vocab_ids, self.bow_dim), values)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, ordinary: torch.Tensor) -> torch.Tensor:
        return self.represent(self.encode_hidden(ids, mask), ordinary)

    # -- the MLM head travels as extra state (the backbone may be a LoRA reference) --------------------
    def _head_params(self) -> dict[str, nn.Parameter]:
        tied = self.body().get_input_embeddings().weight
        return {n: p for n, p in self.head().named_parameters() if p is not tied}

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self._head_params().values())

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"head.{n}": p.detach().float().cpu() for n, p in self._head_params().items()}

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self._head_params()
        missing = [n for n in params if f"head.{n}" not in state]
        if missing:
            raise ModelError(f"the checkpoint's extra state lacks MLM head tensors: {missing[:3]}")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[f"head.{n}"])


class DenseEncoder:
    """Texts -> one [dim + bow_dim] float32 vector each (DupMAE model); compared by inner product."""

    def __init__(self, model: DupMAEModel, tokenizer, config: EncoderConfig, device: str = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(device)
        self.model.to(self.device)
        self.mask_id = tokenizer.mask_token_id
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    @property
    def dim(self) -> int:
        return self.config.dim + max(0, self.config.bow_dim)

    def _tokenize(self, texts: Sequence[str], maxlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), max_length=maxlen, truncation=True, padding="longest",
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def tokenize_queries(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tokenize(texts, self.config.query_maxlen)

    def tokenize_documents(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tokenize(texts, self.config.doc_maxlen)

    def ordinary_mask(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Real tokens that are not special ([CLS], [SEP], [MASK], [UNK], padding)."""
        return mask.bool() & ~torch.isin(ids, self.special.to(ids.device))

    # -- differentiable (training) ------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.model(ids, mask, self.ordinary_mask(ids, mask))

    query_forward = forward
    document_forward = forward

    # -- inference ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _encode(self, texts: Sequence[str], maxlen: int, batch_size: int, progress: bool | None, desc: str):
        self.model.eval()
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        show = progress if progress is not None else len(texts) >= 500
        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not show, dynamic_ncols=True)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            ids, mask = self._tokenize([texts[j] for j in idx], maxlen)
            out[idx] = self.forward(ids, mask).float().cpu()
            bar.update(len(idx))
        bar.close()
        return out

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64, progress: bool | None = None,
                       desc: str = "encoding queries") -> torch.Tensor:
        """[N, dim + bow_dim] float32."""
        return self._encode(texts, self.config.query_maxlen, batch_size, progress, desc)

    def encode_documents(self, texts: Sequence[str], batch_size: int = 16, progress: bool | None = None,
                         desc: str = "encoding") -> torch.Tensor:
        """[N, dim + bow_dim] float32, in input order (batches sorted by length)."""
        return self._encode(texts, self.config.doc_maxlen, batch_size, progress, desc)

    def model_rankings(self, corpus: dict, queries: dict[str, str], depth: int = 100) -> dict[str, list[str]]:
        """Top-``depth`` document ids per query by inner product (hard-negative mining)."""
        was_training = self.model.training
        doc_ids = list(corpus)
        docs = self.encode_documents([corpus[d].full_text for d in doc_ids], progress=True,
                                     desc="mining negatives")
        qids = list(queries)
        q = self.encode_queries([queries[x] for x in qids])
        self.model.train(was_training)
        out = {}
        for i in range(0, len(qids), 256):
            top = (q[i : i + 256] @ docs.T).topk(min(depth, len(doc_ids)), dim=1).indices
            for qid, row in zip(qids[i : i + 256], top.tolist(), strict=True):
                out[qid] = [doc_ids[j] for j in row]
        return out


def _require_dense(encoder, objective: str) -> DenseEncoder:
    if not isinstance(encoder, DenseEncoder):
        raise DataError(f"--objective {objective} needs a DupMAE model: start from the backbone or from an "
                        "--init checkpoint trained with --objective dupmae, not a multi-vector model")
    return encoder


def _dense_config(config: EncoderConfig, bow_dim: int, bow_topk: int) -> EncoderConfig:
    return replace(config, kind="dupmae", bow_dim=bow_dim, bow_topk=bow_topk)


# -- objectives -------------------------------------------------------------------------------------------
class DupMAEObjective:
    """DupMAE pre-training on the documents of each batch (labels are not used; ``--pairs crops``)."""

    name = "dupmae"
    options = {"encoder_mask": "encoder_mask", "decoder_mask": "decoder_mask", "bow_weight": "bow_weight",
               "bow_dim": "bow_dim", "bow_topk": "bow_topk"}

    def __init__(self, encoder_mask: float = 0.3, decoder_mask: float = 0.5, bow_weight: float = 0.1,
                 bow_dim: int = 256, bow_topk: int = 64) -> None:
        self.encoder_mask = encoder_mask
        self.decoder_mask = decoder_mask
        self.bow_weight = bow_weight
        self.bow_dim = bow_dim
        self.bow_topk = bow_topk
        self.decoder: EnhancedDecoder | None = None

    def configure(self, config: EncoderConfig) -> EncoderConfig:
        return _dense_config(config, self.bow_dim, self.bow_topk)

    def prepare(self, encoder) -> DenseEncoder:
        encoder = _require_dense(encoder, self.name)
        cfg = encoder.model.core().config
        self.decoder = EnhancedDecoder(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
                                       getattr(cfg, "hidden_dropout_prob", 0.1),
                                       getattr(cfg, "layer_norm_eps", 1e-12))
        self.decoder.to(encoder.device)
        return encoder

    def parameters(self):
        return self.decoder.parameters() if self.decoder is not None else iter(())

    def named_parameters(self):
        return self.decoder.named_parameters() if self.decoder is not None else iter(())

    def decoder_logits(self, model: DupMAEModel, h_cls: torch.Tensor, ids: torch.Tensor,
                       visible: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits [B, L, V] from the [CLS] embedding through the enhanced decoder."""
        assert self.decoder is not None, "call prepare() first"
        emb = model.body().embeddings
        b, length = ids.shape
        query = emb(inputs_embeds=h_cls[:, None, :].expand(b, length, h_cls.shape[-1]))
        keys = torch.cat([h_cls[:, None, :], emb(input_ids=ids)[:, 1:]], dim=1)
        return model.head()(self.decoder(query, keys.to(query.dtype), visible))

    def losses(self, encoder: DenseEncoder, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        model = encoder.model
        ids, mask = encoder.tokenize_documents(texts)
        ids, mask = ids.to(encoder.device), mask.to(encoder.device)
        ordinary = encoder.ordinary_mask(ids, mask)
        vocab = model.core().config.vocab_size
        masked_ids, labels = mlm_mask(ids, ordinary, self.encoder_mask, encoder.mask_id, vocab)
        hidden = model.encode_hidden(masked_ids, mask)
        logits = model.head()(hidden)
        visible = decoder_visibility(mask.bool(), ordinary, self.decoder_mask)
        assert self.decoder is not None, "call prepare() first"
        self.decoder.train(model.training)
        dec_logits = self.decoder_logits(model, hidden[:, 0], ids, visible)
        return {"mlm": masked_lm_loss(logits, labels),
                "dec": masked_lm_loss(dec_logits, ids.masked_fill(~ordinary, -100)),
                "bow": bow_loss(logits, ordinary, ids)}

    def loss(self, encoder: DenseEncoder, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        parts = self.losses(encoder, batch.docs)
        loss = parts["mlm"] + parts["dec"] + self.bow_weight * parts["bow"]
        return loss, {k: v.item() for k, v in parts.items()}


class DenseObjective(ColBERTObjective):
    """Contrastive fine-tuning of a DupMAE dense model: inner products, softmax cross-entropy over the
    positive, hard negatives and in-batch negatives; optional KL distillation."""

    name = "dense"
    options = {"distill_weight": "distill_weight", "bow_dim": "bow_dim", "bow_topk": "bow_topk"}

    def __init__(self, distill_weight: float = 1.0, bow_dim: int = 256, bow_topk: int = 64) -> None:
        super().__init__(distill_weight)
        self.bow_dim = bow_dim
        self.bow_topk = bow_topk

    def configure(self, config: EncoderConfig) -> EncoderConfig:
        return _dense_config(config, self.bow_dim, self.bow_topk)

    def prepare(self, encoder) -> DenseEncoder:
        return _require_dense(encoder, self.name)

    def scores(self, encoder: DenseEncoder, batch: Batch) -> torch.Tensor:
        q = encoder.query_forward(*encoder.tokenize_queries(batch.queries))
        d = encoder.document_forward(*encoder.tokenize_documents(batch.docs))
        return q @ d.T
