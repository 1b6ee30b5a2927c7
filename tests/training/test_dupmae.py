"""DupMAE losses and dense model against slow references, gradient flow, and tiny end-to-end runs."""

import math

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import _DiesAtStep2, _Killed, make_beir
from test_trainer import config as train_config

from tessera.errors import DataError
from tessera.training.checkpoints import load_encoder, new_encoder, save_checkpoint
from tessera.training.config import EncoderConfig
from tessera.training.dupmae import (
    DenseEncoder,
    DenseObjective,
    DupMAEObjective,
    EnhancedDecoder,
    bow_loss,
    bow_vector,
    decoder_visibility,
    hash_buckets,
    masked_lm_loss,
    max_pool,
    mlm_mask,
    split_head,
)
from tessera.training.objectives import Batch
from tessera.training.pairs import Example
from tessera.training.trainer import Trainer

TEXTS = ["cancer cells in mice and the blood of human patients", "dog tree", "red fish, blue fish; the sun"]


@pytest.fixture
def dense(tiny_bert_dir) -> DenseEncoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(backbone=str(tiny_bert_dir), dim=8, query_maxlen=12, doc_maxlen=32, kind="dupmae",
                        bow_dim=16, bow_topk=5)
    return new_encoder(cfg)


def _logits_case(seed=0, b=3, length=6, vocab=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, length, vocab, generator=g) * 3
    ids = torch.randint(0, vocab, (b, length), generator=g)
    ordinary = torch.rand(b, length, generator=g) > 0.3
    ordinary[:, 0] = False
    ordinary[2] = False  # a row without ordinary tokens
    return logits, ids, ordinary


# -- losses against loops ----------------------------------------------------------------------------
def test_bow_loss_matches_naive_loop():
    logits, ids, ordinary = _logits_case()
    total, rows = 0.0, 0
    for b in range(logits.shape[0]):
        pos = [p for p in range(logits.shape[1]) if ordinary[b, p]]
        if not pos:
            continue
        pooled = [max(float(logits[b, p, v]) for p in pos) for v in range(logits.shape[2])]
        lse = math.log(sum(math.exp(x) for x in pooled))
        distinct = {int(ids[b, p]) for p in pos}
        total += -sum((pooled[v] - lse) / len(distinct) for v in distinct)
        rows += 1
    assert abs(bow_loss(logits, ordinary, ids).item() - total / rows) < 1e-5


def test_masked_lm_loss_matches_naive_loop_and_is_zero_without_labels():
    logits, ids, ordinary = _logits_case(seed=1)
    labels = ids.masked_fill(~ordinary, -100)
    terms = []
    for b in range(logits.shape[0]):
        for p in range(logits.shape[1]):
            if labels[b, p] >= 0:
                row = logits[b, p].tolist()
                terms.append(-(row[int(labels[b, p])] - math.log(sum(math.exp(x) for x in row))))
    assert abs(masked_lm_loss(logits, labels).item() - sum(terms) / len(terms)) < 1e-5
    assert masked_lm_loss(logits, torch.full_like(labels, -100)).item() == 0.0


def test_bow_vector_matches_naive_loop():
    pooled = torch.randn(3, 40, generator=torch.Generator().manual_seed(2)) * 2
    out = bow_vector(pooled, topk=7, buckets=5)
    for b in range(3):
        vals = [math.log1p(max(0.0, float(x))) for x in pooled[b]]
        top = sorted(range(40), key=lambda v: -vals[v])[:7]
        ref = [0.0] * 5
        for v in top:
            ref[(v * 0x9E3779B1 % 2**32) % 5] += vals[v]
        torch.testing.assert_close(out[b], torch.tensor(ref))
    assert hash_buckets(torch.arange(1000), 64).unique().numel() == 64


def test_max_pool_only_over_ordinary_positions():
    logits, _, ordinary = _logits_case(seed=3)
    pooled = max_pool(logits, ordinary)
    for b in range(2):
        pos = ordinary[b].nonzero().flatten()
        torch.testing.assert_close(pooled[b], logits[b, pos].max(0).values)
    assert (pooled[2] == 0).all()


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_split_head_reproduces_the_head(arch):
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    kw = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = BertForMaskedLM(BertConfig(**kw)) if arch == "bert" else RobertaForMaskedLM(RobertaConfig(**kw))
    head = model.cls if arch == "bert" else model.lm_head
    with torch.no_grad():  # a non-zero bias, so a dropped bias would show
        head.get_parameter("decoder.bias" if arch == "roberta" else "predictions.decoder.bias").normal_()
    transform, decoder = split_head(head)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(decoder(transform(x)), head(x))


def test_selected_bow_has_the_full_heads_value_and_gradient(dense):
    """Training recomputes only the top-k winning logits with autograd; value and gradients must match
    the obvious path through the full [B, L, V] logits."""
    model = dense.model
    assert split_head(model.head()) is not None  # else the fast path is not under test
    ids, mask = dense.tokenize_documents(TEXTS)
    ordinary = dense.ordinary_mask(ids, mask)
    ordinary[1] = False  # a row without ordinary tokens
    with torch.no_grad():
        hidden = model.encode_hidden(ids, mask)
    weights = torch.randn(len(TEXTS), model.linear.out_features + model.bow_dim,
                          generator=torch.Generator().manual_seed(0))

    def run(fast: bool):
        model.zero_grad()
        h = hidden.clone().requires_grad_(True)
        if fast:
            out = model.represent(h, ordinary, chunk=2)
        else:
            pooled = max_pool(model.head()(h).float(), ordinary)
            out = torch.cat([model.linear(h[:, 0]), bow_vector(pooled, model.bow_topk, model.bow_dim)], 1)
        (out * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.head().named_parameters() if p.grad is not None}
        return out.detach(), h.grad, grads

    out_fast, h_fast, g_fast = run(True)
    out_ref, h_ref, g_ref = run(False)
    assert (out_ref[:, model.linear.out_features :] != 0).any()
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_fast, h_ref, rtol=1e-4, atol=1e-6)
    assert g_fast.keys() == g_ref.keys() and g_ref
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-4, atol=1e-6)


def test_encoder_masking_touches_only_ordinary_tokens_at_the_rate():
    torch.manual_seed(0)
    ids = torch.randint(10, 100, (64, 50))
    ordinary = torch.rand(64, 50) > 0.2
    out, labels = mlm_mask(ids, ordinary, 0.3, mask_id=3, vocab_size=100)
    chosen = labels != -100
    assert not (chosen & ~ordinary).any()
    assert (labels[chosen] == ids[chosen]).all()
    assert (out[~chosen] == ids[~chosen]).all()
    assert abs(chosen.sum().item() / ordinary.sum().item() - 0.3) < 0.03
    masked = (out[chosen] == 3).float().mean().item()
    assert abs(masked - 0.8) < 0.05


def test_decoder_visibility_is_position_specific():
    torch.manual_seed(0)
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, 30:] = False
    ordinary = valid.clone()
    ordinary[:, 0] = False
    ordinary[0, 39] = False  # [SEP]
    ordinary[1, 29] = False
    vis = decoder_visibility(valid, ordinary, 0.5)
    assert vis[:, :, 0].all()  # the [CLS] embedding
    for i in range(1, 40):
        assert not vis[:, i, i].any()  # never itself
    assert not vis[1, :, 30:].any()  # padding
    assert vis[0, 1:39, 39].all()  # special tokens stay visible (except to themselves)
    frac = vis[0, 1:39, 1:39].float().sum() / (38 * 37)
    assert abs(frac.item() - 0.5) < 0.05
    assert not torch.equal(vis[0, 5], vis[0, 6])  # each position its own mask


def test_enhanced_decoder_matches_per_position_loop():
    torch.manual_seed(0)
    dec = EnhancedDecoder(hidden=8, heads=2, intermediate=16, dropout=0.0).eval()
    b, length, h = 2, 5, 8
    query, keys = torch.randn(b, length, h), torch.randn(b, length, h)
    vis = torch.rand(b, length, length) > 0.5
    vis[:, :, 0] = True
    with torch.no_grad():
        out = dec(query, keys, vis)
        _check_decoder(dec, query, keys, vis, out)


def _check_decoder(dec, query, keys, vis, out):
    b, length, _ = query.shape
    wq, wk, wv = dec.attn.in_proj_weight.chunk(3)
    bq, bk, bv = dec.attn.in_proj_bias.chunk(3)
    for bb in range(b):
        for i in range(length):
            seen = [j for j in range(length) if vis[bb, i, j]]
            q = wq @ query[bb, i] + bq
            ctx = []
            for head in range(2):
                sl = slice(4 * head, 4 * head + 4)
                ks = [(wk @ keys[bb, j] + bk)[sl] for j in seen]
                vs = [(wv @ keys[bb, j] + bv)[sl] for j in seen]
                s = [float(q[sl] @ k) / 2.0 for k in ks]
                z = sum(math.exp(x) for x in s)
                ctx.append(sum(math.exp(x) / z * v for x, v in zip(s, vs, strict=True)))
            a = dec.attn.out_proj(torch.cat(ctx))
            hid = dec.norm1(query[bb, i] + a)
            ref = dec.norm2(hid + dec.ffn(hid))
            torch.testing.assert_close(out[bb, i], ref, rtol=1e-4, atol=1e-5)


# -- the dense model ----------------------------------------------------------------------------------
def test_dense_vector_is_projected_cls_and_hashed_bag_of_words(dense):
    dense.model.eval()
    vecs = dense.encode_documents(TEXTS)
    assert vecs.shape == (3, 8 + 16) and vecs.dtype == torch.float32
    with torch.no_grad():
        for row, text in enumerate(TEXTS):
            ids, mask = dense.tokenize_documents([text])
            hidden = dense.model.encode_hidden(ids, mask)
            logits = dense.model.head()(hidden)[0]
            ordinary = [p for p in range(ids.shape[1]) if ids[0, p] not in dense.tokenizer.all_special_ids]
            pooled = logits[ordinary].max(0).values
            ref = torch.cat([dense.model.linear(hidden[0, 0]), bow_vector(pooled[None], 5, 16)[0]])
            torch.testing.assert_close(vecs[row], ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dense.encode_queries(TEXTS[:1])[0], vecs[0], rtol=1e-4, atol=1e-5)


def test_dupmae_gradients_reach_encoder_head_and_decoder(dense):
    obj = DupMAEObjective(bow_dim=16, bow_topk=5)
    obj.prepare(dense)
    dense.model.train()
    torch.manual_seed(1)
    parts = obj.losses(dense, TEXTS)
    assert all(torch.isfinite(v) and v > 0 for v in parts.values())
    for name in ("mlm", "dec", "bow"):
        dense.model.zero_grad()
        obj.decoder.zero_grad()
        torch.manual_seed(1)
        obj.losses(dense, TEXTS)[name].backward()
        layer0 = dense.model.body().encoder.layer[0].attention.self.query.weight
        assert layer0.grad is not None and layer0.grad.abs().sum() > 0, name
        head = dense.model.head().predictions.transform.dense.weight
        assert head.grad.abs().sum() > 0, name
        dec_grad = sum(p.grad.abs().sum() for p in obj.decoder.parameters() if p.grad is not None)
        assert (dec_grad > 0) == (name == "dec"), name
        assert dense.model.linear.weight.grad is None or dense.model.linear.weight.grad.abs().sum() == 0


def test_decoder_reads_the_text_only_through_cls_and_visible_tokens(dense):
    obj = DupMAEObjective()
    obj.prepare(dense)
    obj.decoder.eval()
    ids, _ = dense.tokenize_documents(TEXTS[:1])
    h_cls = torch.randn(1, dense.model.core().config.hidden_size, requires_grad=True)
    vis = torch.zeros(1, ids.shape[1], ids.shape[1], dtype=torch.bool)
    vis[:, :, 0] = True
    vis[0, 3, 5] = True
    out = obj.decoder_logits(dense.model, h_cls, ids, vis)
    other = ids.clone()
    other[0, 4] = other[0, 6]  # position 4 is invisible to position 3
    torch.testing.assert_close(obj.decoder_logits(dense.model, h_cls, other, vis)[0, 3], out[0, 3])
    other[0, 5] = other[0, 6]  # position 5 is visible to it
    assert not torch.allclose(obj.decoder_logits(dense.model, h_cls, other, vis)[0, 3], out[0, 3])
    out[0, 3].sum().backward()
    assert h_cls.grad.abs().sum() > 0


def test_dense_objective_scores_are_inner_products(dense):
    batch = Batch.from_examples([Example("cancer cells", TEXTS[:2], ["a", "b"], {"a"}),
                                 Example("red fish", [TEXTS[2], "moon star"], ["c", "d"], {"c"})])
    dense.model.eval()
    with torch.no_grad():
        scores = DenseObjective().scores(dense, batch)
    q = dense.encode_queries(batch.queries)
    d = dense.encode_documents(batch.docs)
    torch.testing.assert_close(scores, q @ d.T, rtol=1e-4, atol=1e-4)


# -- end to end -----------------------------------------------------------------------------------------
def _dupmae_config(tmp_path, tiny_bert_dir, **kw):
    base = dict(objective="dupmae", pairs="crops", negatives=0, max_steps=3, bow_dim=16, bow_topk=5, dim=8)
    base.update(kw)
    return train_config(tmp_path, tiny_bert_dir, **base)


def _same_vectors(a, b, tol=1e-4):
    torch.testing.assert_close(a.encode_documents(TEXTS), b.encode_documents(TEXTS), atol=tol, rtol=tol)


def test_pretraining_then_fine_tuning_end_to_end(tmp_path, tiny_bert_dir):
    data = make_beir(tmp_path / "data")
    pre = Trainer(_dupmae_config(tmp_path / "pre", tiny_bert_dir, data=str(data)))
    path = pre.train()
    loaded = load_encoder(str(path))
    assert isinstance(loaded, DenseEncoder) and loaded.config.kind == "dupmae" and loaded.dim == 24
    _same_vectors(loaded, pre.encoder)
    # fine-tune from the pre-trained model; model-mined negatives use the dense vectors
    ft = Trainer(train_config(tmp_path / "ft", tiny_bert_dir, data=str(data), objective="dense",
                              init=str(path), negatives_from="bm25+model", max_steps=4))
    out = ft.train()
    assert (tmp_path / "ft" / "out" / "negatives-model.json").is_file()
    _same_vectors(load_encoder(str(out)), ft.encoder)


def test_lora_pretraining_keeps_the_trained_mlm_head(tmp_path, tiny_bert_dir):
    trainer = Trainer(_dupmae_config(tmp_path, tiny_bert_dir, lora_rank=4, lora_alpha=8, lr=1e-2))
    before = {k: v.clone() for k, v in trainer.encoder.model.extra_state_dict().items()}
    path = trainer.train()
    after = trainer.encoder.model.extra_state_dict()
    assert not torch.equal(before["head.predictions.transform.dense.weight"],
                           after["head.predictions.transform.dense.weight"])  # the head trains beside LoRA
    adapter = load_file(str(path / "adapter.safetensors"))
    assert adapter and not any(k.startswith("cls.") or ".cls." in k for k in adapter)
    extra = load_file(str(path / "extra.safetensors"))
    assert "head.predictions.transform.dense.weight" in extra
    torch.manual_seed(123)  # a missing head would come back with different random weights
    _same_vectors(load_encoder(str(path)), trainer.encoder, tol=2e-3)  # adapter and projection in fp16


def test_dense_fine_tuning_from_the_plain_backbone(tmp_path, tiny_bert_dir):
    trainer = Trainer(train_config(tmp_path, tiny_bert_dir, objective="dense", dim=8, bow_dim=0, max_steps=2))
    path = trainer.train()
    loaded = load_encoder(str(path))
    assert loaded.dim == 8
    _same_vectors(loaded, trainer.encoder)


def test_dense_objectives_refuse_multivector_checkpoints(tmp_path, tiny_bert_dir, tiny_encoder):
    init = save_checkpoint(tiny_encoder, tmp_path / "colbert")
    for objective in ("dense", "dupmae"):
        with pytest.raises(DataError, match="DupMAE model"):
            Trainer(train_config(tmp_path, tiny_bert_dir, objective=objective, init=str(init)))


def test_pretraining_resumes_with_its_decoder(tmp_path, tiny_bert_dir):
    full = Trainer(_dupmae_config(tmp_path / "full", tiny_bert_dir, max_steps=4, save_every=1)).train()
    cfg = _dupmae_config(tmp_path / "killed", tiny_bert_dir, max_steps=4, save_every=1)
    with pytest.raises(_Killed):
        _DiesAtStep2(cfg).train()
    state = load_file(str(tmp_path / "killed" / "out" / "state" / "trainable.safetensors"))
    assert any(k.startswith("objective.") for k in state)
    resumed = Trainer(cfg).train()
    for name in ("projection.safetensors", "extra.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(resumed / name))
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    _same_vectors(load_encoder(str(full)), load_encoder(str(resumed)))


def test_dupmae_and_dense_losses_run_under_bf16_autocast(dense):
    """Mixed precision (``--amp`` on CUDA autocasts to bf16); CPU autocast exercises the same casts."""
    pre = DupMAEObjective(bow_dim=16, bow_topk=5)
    pre.prepare(dense)
    batch = Batch.from_examples([Example("cancer cells", TEXTS[:2], ["a", "b"], {"a"}),
                                 Example("red fish", [TEXTS[2], "moon star"], ["c", "d"], {"c"})])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pre.loss(dense, batch)[0] + DenseObjective(bow_dim=16, bow_topk=5).loss(dense, batch)[0]
    loss.backward()
    assert torch.isfinite(loss) and dense.model.linear.weight.grad.abs().sum() > 0


def test_pretraining_loss_adds_the_three_losses_with_the_bow_weight(dense):
    obj = DupMAEObjective(bow_dim=16, bow_topk=5, bow_weight=0.1)
    obj.prepare(dense)
    dense.model.eval()  # no dropout: the same random masks give the same losses
    batch = Batch.from_examples([Example("q", [t], [str(i)], {str(i)}) for i, t in enumerate(TEXTS)])
    with torch.no_grad():
        torch.manual_seed(5)
        parts = obj.losses(dense, TEXTS)
        torch.manual_seed(5)
        loss, logs = obj.loss(dense, batch)
    assert loss.item() == pytest.approx((parts["mlm"] + parts["dec"] + 0.1 * parts["bow"]).item(), rel=1e-6)
    assert logs == pytest.approx({k: v.item() for k, v in parts.items()}, rel=1e-6)
