"""Encoder conventions against hand-built token sequences and a plain transformers forward pass."""

from __future__ import annotations

import string

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel

from tessera.training.checkpoints import new_encoder
from tessera.training.config import EncoderConfig

QUERIES = ["red fish", "what about the cancer cells in mice, and why?", "the " * 30 + "dog"]
DOCS = [
    "the red fish, the blue sun.",
    "dog",
    "",
    "cancer cells (in mice) were found; gene expression increased!",
    " ".join(["protein"] * 60) + " end",
    "a",
]


def _encoder(tiny_bert_dir, **kw):
    torch.manual_seed(0)
    base = dict(backbone=str(tiny_bert_dir), dim=16, query_maxlen=12, doc_maxlen=20)
    base.update(kw)
    return new_encoder(EncoderConfig(**base))


def _word_ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _ref_query_ids(enc, text):
    """[CLS] [Q] tokens [SEP] [MASK]... of exactly query_maxlen; attention only on the real part."""
    tok, qlen = enc.tokenizer, enc.config.query_maxlen
    real = [tok.cls_token_id, tok.convert_tokens_to_ids(enc.config.query_marker)]
    real += _word_ids(tok, text)[: qlen - 3] + [tok.sep_token_id]
    ids = real + [tok.mask_token_id] * (qlen - len(real))
    attend = [1] * len(real) + [1 if enc.config.attend_to_mask_tokens else 0] * (qlen - len(real))
    return ids, attend


def _ref_doc_ids(enc, text):
    tok = enc.tokenizer
    words = _word_ids(tok, text)[: enc.config.doc_maxlen - 3]
    return [tok.cls_token_id, tok.convert_tokens_to_ids(enc.config.doc_marker)] + words + [tok.sep_token_id]


def _punct_ids(tok):
    return {tok.convert_tokens_to_ids(p) for p in string.punctuation}


@torch.no_grad()
def _ref_vectors(bert, weight, ids, attend):
    h = bert(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attend])).last_hidden_state[0]
    return F.normalize(h @ weight.T, dim=-1)


@pytest.fixture(scope="module")
def ref_bert(tiny_bert_dir):
    return BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).eval()


def test_query_tokens_marker_mask_padding_and_attention(tiny_bert_dir):
    enc = _encoder(tiny_bert_dir)
    ids, mask = enc.tokenize_queries(QUERIES)
    assert ids.shape == mask.shape == (len(QUERIES), 12)
    for row, text in enumerate(QUERIES):
        ref_ids, ref_mask = _ref_query_ids(enc, text)
        assert ids[row].tolist() == ref_ids
        assert mask[row].tolist() == ref_mask
    assert ids[:, 1].eq(enc.tokenizer.convert_tokens_to_ids("[unused0]")).all()
    assert (mask[ids == enc.tokenizer.mask_token_id] == 0).all()
    # the long query is truncated to query_maxlen with its [SEP] kept last
    assert ids[2, -1].item() == enc.tokenizer.sep_token_id


def test_attend_to_mask_tokens_attends_everywhere(tiny_bert_dir):
    enc = _encoder(tiny_bert_dir, attend_to_mask_tokens=True)
    ids, mask = enc.tokenize_queries(QUERIES[:1])
    assert ids[0].tolist() == _ref_query_ids(enc, QUERIES[0])[0]
    assert mask.eq(1).all()


@pytest.mark.parametrize("attend", [False, True])
def test_query_vectors_match_a_plain_forward_pass(tiny_bert_dir, ref_bert, attend):
    enc = _encoder(tiny_bert_dir, attend_to_mask_tokens=attend)
    out = enc.encode_queries(QUERIES, batch_size=2)
    assert out.shape == (len(QUERIES), 12, 16) and out.dtype == torch.float32
    weight = enc.model.linear.weight
    for row, text in enumerate(QUERIES):
        ref = _ref_vectors(ref_bert, weight, *_ref_query_ids(enc, text))
        torch.testing.assert_close(out[row], ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(QUERIES), 12), atol=1e-5, rtol=0)


def test_document_tokens_are_truncated_to_doc_maxlen(tiny_bert_dir):
    enc = _encoder(tiny_bert_dir)
    ids, mask = enc.tokenize_documents(DOCS)
    assert ids.shape[1] == 20  # the 60-word document fills doc_maxlen exactly
    for row, text in enumerate(DOCS):
        ref = _ref_doc_ids(enc, text)
        assert ids[row, : len(ref)].tolist() == ref
        assert mask[row].sum().item() == len(ref)


def test_documents_drop_punctuation_and_padding_and_keep_token_ids(tiny_bert_dir, ref_bert):
    enc = _encoder(tiny_bert_dir)
    packed = enc.encode_documents(DOCS, batch_size=4)
    assert packed.vectors.dtype == torch.float16 and packed.token_ids.dtype == torch.int32
    punct = _punct_ids(enc.tokenizer)
    weight = enc.model.linear.weight
    for i, text in enumerate(DOCS):
        ids = _ref_doc_ids(enc, text)
        keep = [j for j, t in enumerate(ids) if t not in punct]
        ref = _ref_vectors(ref_bert, weight, ids, [1] * len(ids))[keep]
        off = packed.offsets
        assert packed.token_ids[off[i] : off[i + 1]].tolist() == [ids[j] for j in keep]
        torch.testing.assert_close(packed.doc(i).float(), ref, atol=2e-3, rtol=0)
    assert not set(packed.token_ids.tolist()) & punct
    assert int(packed.lengths[4]) == 20  # truncated document: every token kept
    torch.testing.assert_close(packed.vectors.float().norm(dim=-1), torch.ones(len(packed.vectors)),
                               atol=2e-3, rtol=0)


def test_punctuation_is_kept_when_masking_is_off(tiny_bert_dir):
    enc = _encoder(tiny_bert_dir, mask_punctuation=False)
    packed = enc.encode_documents(DOCS[:1])
    assert packed.token_ids.tolist() == _ref_doc_ids(enc, DOCS[0])


def test_documents_come_back_in_input_order_whatever_the_batch_size(tiny_bert_dir):
    enc = _encoder(tiny_bert_dir)
    singles = [enc.encode_documents([t]) for t in DOCS]
    for bs in (1, 2, 64):
        packed = enc.encode_documents(DOCS, batch_size=bs)
        assert packed.lengths.tolist() == [int(s.lengths[0]) for s in singles]
        for i, single in enumerate(singles):
            span = packed.token_ids[packed.offsets[i] : packed.offsets[i + 1]]
            assert span.tolist() == single.token_ids.tolist()
            torch.testing.assert_close(packed.doc(i).float(), single.doc(0).float(), atol=2e-3, rtol=0)


def test_query_batch_size_does_not_change_vectors(tiny_bert_dir):
    enc = _encoder(tiny_bert_dir)
    one, many = enc.encode_queries(QUERIES, batch_size=1), enc.encode_queries(QUERIES, batch_size=64)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-4)


def test_empty_inputs(tiny_bert_dir):
    enc = _encoder(tiny_bert_dir)
    assert enc.encode_queries([]).shape == (0, 12, 16)
    packed = enc.encode_documents([])
    assert len(packed) == 0 and packed.vectors.shape == (0, 16)


def test_unknown_marker_is_an_error(tiny_bert_dir):
    with pytest.raises(ValueError, match="not in the tokenizer"):
        _encoder(tiny_bert_dir, query_marker="[NOPE]")
