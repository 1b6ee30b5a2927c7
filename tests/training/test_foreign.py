"""Stanford ColBERT and PyLate folders: tiny random models written the way colbert-ai and PyLate
write them, loaded through ``load_encoder``, checked against vectors and MaxSim computed here
directly from the saved weights with plain transformers."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel, BertPreTrainedModel

from tessera.errors import ModelError
from tessera.scoring import maxsim_scores
from tessera.training.checkpoints import load_encoder

QUERIES = ["red fish", "what about cancer cells in mice, and why?", "the " * 20 + "dog"]
DOCS = [
    "the red fish, the blue sun.",
    "dog",
    "cancer cells (in mice) were found; gene expression increased!",
    " ".join(["protein"] * 40) + " end",
]
QLEN, DLEN, DIM = 12, 20, 8
ST_TRANSFORMER = "sentence_transformers.models.Transformer"


# -- writers: the files colbert-ai and PyLate produce -----------------------------------------------
class HF_ColBERT(BertPreTrainedModel):  # noqa: N801 - the name colbert-ai gives the class (config.json)
    """What colbert-ai's ``class_factory`` builds for a BERT checkpoint: ``bert`` + bias-free ``linear``."""

    def __init__(self, config, dim):
        super().__init__(config)
        self.linear = nn.Linear(config.hidden_size, dim, bias=False)
        self.bert = BertModel(config)
        self.post_init()


def _colbert_metadata(**kw) -> dict:
    """artifact.metadata as ColBERTConfig.save writes it (a flat dump of every setting + "meta")."""
    meta = {
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_token": "[Q]", "doc_token": "[D]",
        "ncells": None, "centroid_score_threshold": None, "ndocs": None, "load_index_with_mmap": False,
        "index_path": None, "index_bsize": 64, "nbits": 2, "kmeans_niters": 4, "resume": False,
        "pool_factor": 1, "clustering_mode": "hierarchical", "protected_tokens": 0,
        "similarity": "cosine", "bsize": 32, "accumsteps": 1, "lr": 1e-05, "maxsteps": 400000,
        "save_every": None, "warmup": 20000, "warmup_bert": None, "relu": False, "nway": 64,
        "use_ib_negatives": True, "reranker": False, "distillation_alpha": 1.0, "ignore_scores": False,
        "model_name": None, "query_maxlen": QLEN, "attend_to_mask_tokens": False, "interaction": "colbert",
        "dim": DIM, "doc_maxlen": DLEN, "mask_punctuation": True, "checkpoint": "bert-base-uncased",
        "triples": "/path/to/triples.jsonl", "collection": "/path/to/collection.tsv",
        "queries": "/path/to/queries.tsv", "index_name": None, "overwrite": False, "root": "/experiments",
        "experiment": "default", "index_root": None, "name": "2021-10/25/17.00.00", "rank": 0,
        "nranks": 4, "amp": True, "gpus": 4, "avoid_fork_if_possible": False,
        "meta": {"hostname": "host", "git_branch": "main", "git_hash": "0" * 40, "git_commit_datetime": "",
                 "current_datetime": "", "cmd": "train.py", "version": "colbert-v0.4"},
    }
    meta.update(kw)
    return meta


def write_stanford(out: Path, tiny: Path, bin_weights: bool = False, **meta) -> Path:
    out.mkdir(parents=True)
    config = BertConfig.from_pretrained(tiny)
    torch.manual_seed(3)
    model = HF_ColBERT(config, DIM)
    backbone = BertModel.from_pretrained(tiny, add_pooling_layer=False)
    model.bert.load_state_dict(backbone.state_dict(), strict=False)  # the pooler stays random, as saved
    if bin_weights:  # colbertv2.0's layout (transformers < 4.35 wrote pickles)
        model.config.architectures = ["HF_ColBERT"]
        model.config.save_pretrained(out)
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    else:
        model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    (out / "artifact.metadata").write_text(json.dumps(_colbert_metadata(**meta), indent=4) + "\n")
    return out


def write_pylate(out: Path, tiny: Path, transformer_path: str = "", dims=(DIM,), prefixes=("[Q] ", "[D] "),
                 bin_weights: bool = False, **st) -> Path:
    """What pylate.models.ColBERT(...).save(out) writes (sentence-transformers layout)."""
    tok = AutoTokenizer.from_pretrained(tiny)
    bert = BertModel.from_pretrained(tiny, add_pooling_layer=False)
    torch.manual_seed(4)
    bert.resize_token_embeddings(len(tok))  # PyLate adds the prefixes as tokens and grows the embeddings
    tok.add_tokens(list(prefixes))
    bert.resize_token_embeddings(len(tok))
    tdir = out / transformer_path
    bert.save_pretrained(tdir)
    tok.save_pretrained(tdir)
    sbert = {"max_seq_length": 512, "do_lower_case": False}
    (tdir / "sentence_bert_config.json").write_text(json.dumps(sbert))
    modules = [{"idx": 0, "name": "0", "path": transformer_path, "type": ST_TRANSFORMER}]
    in_f = bert.config.hidden_size
    for k, dim in enumerate(dims, start=1):
        ddir = out / f"{k}_Dense"
        ddir.mkdir()
        cfg = {"in_features": in_f, "out_features": dim, "bias": False,
               "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False}
        (ddir / "config.json").write_text(json.dumps(cfg))
        state = {"linear.weight": torch.randn(dim, in_f) / in_f**0.5}
        if bin_weights:
            torch.save(state, ddir / "pytorch_model.bin")
        else:
            save_file(state, str(ddir / "model.safetensors"))
        modules.append({"idx": k, "name": str(k), "path": f"{k}_Dense", "type": "pylate.models.Dense.Dense"})
        in_f = dim
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    config = {
        "model_type": "ColBERT",
        "__version__": {"sentence_transformers": "5.3.0", "transformers": "5.3.0", "pytorch": "2.10.0"},
        "prompts": {"query": "", "document": ""}, "default_prompt_name": None, "similarity_fn_name": "MaxSim",
        "query_prefix": prefixes[0], "document_prefix": prefixes[1],
        "query_length": QLEN, "document_length": DLEN, "attend_to_expansion_tokens": False,
        "skiplist_words": list(string.punctuation), "do_query_expansion": True,
    }
    config.update(st)
    (out / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2))
    return out


# -- the independent reference ---------------------------------------------------------------------
def _state(folder: Path) -> dict:
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    return torch.load(folder / "pytorch_model.bin", weights_only=True)


class Reference:
    """Vectors computed by hand: marker after [CLS], [MASK]-padded queries, skiplisted documents."""

    def __init__(self, bert, tok, weights, q_marker, d_marker, skip, attend=False, strip=False):
        self.bert, self.tok, self.weights = bert.eval(), tok, weights
        self.q_id, self.d_id = tok.convert_tokens_to_ids(q_marker), tok.convert_tokens_to_ids(d_marker)
        self.skip, self.attend, self.strip = skip, attend, strip

    def _words(self, text, n):
        text = text.strip() if self.strip else text
        return self.tok(text, add_special_tokens=False)["input_ids"][:n]

    @torch.no_grad()
    def _forward(self, ids, attend):
        out = self.bert(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attend]))
        h = out.last_hidden_state[0]
        for w in self.weights:
            h = h @ w.T
        return F.normalize(h, dim=-1)

    def query(self, text):
        real = [self.tok.cls_token_id, self.q_id] + self._words(text, QLEN - 3) + [self.tok.sep_token_id]
        pad = QLEN - len(real)
        ids = real + [self.tok.mask_token_id] * pad
        return self._forward(ids, [1] * len(real) + [int(self.attend)] * pad)

    def doc(self, text):
        ids = [self.tok.cls_token_id, self.d_id] + self._words(text, DLEN - 3) + [self.tok.sep_token_id]
        keep = [i for i, t in enumerate(ids) if t not in self.skip]
        return self._forward(ids, [1] * len(ids))[keep], [ids[i] for i in keep]


def stanford_reference(folder: Path, attend: bool) -> Reference:
    state = _state(folder)
    bert = BertModel(BertConfig.from_pretrained(folder), add_pooling_layer=False)
    bert.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("bert.") and "pooler" not in k})
    tok = AutoTokenizer.from_pretrained(folder)
    skip = {tok.encode(p, add_special_tokens=False)[0] for p in string.punctuation}
    return Reference(bert, tok, [state["linear.weight"]], "[unused0]", "[unused1]", skip, attend)


def pylate_reference(folder: Path, transformer_path: str, n_dense: int, prefixes, words, attend) -> Reference:
    tdir = folder / transformer_path
    tok = AutoTokenizer.from_pretrained(tdir)
    bert = BertModel.from_pretrained(tdir, add_pooling_layer=False)
    weights = [_state(folder / f"{k}_Dense")["linear.weight"] for k in range(1, n_dense + 1)]
    skip = {tok.convert_tokens_to_ids(w) for w in words}
    return Reference(bert, tok, weights, prefixes[0], prefixes[1], skip, attend, strip=True)


def _check_against_reference(enc, ref: Reference):
    q = enc.encode_queries(QUERIES)
    packed = enc.encode_documents(DOCS, batch_size=3)
    ref_q = [ref.query(t) for t in QUERIES]
    ref_d = [ref.doc(t) for t in DOCS]
    for i in range(len(QUERIES)):
        torch.testing.assert_close(q[i], ref_q[i], atol=1e-5, rtol=1e-4)
    for i, (vecs, ids) in enumerate(ref_d):
        assert packed.token_ids[packed.offsets[i] : packed.offsets[i + 1]].tolist() == ids
        torch.testing.assert_close(packed.doc(i).float(), vecs, atol=2e-3, rtol=0)
    by_hand = torch.tensor([[float((qv @ dv.T).max(dim=1).values.sum()) for dv, _ in ref_d] for qv in ref_q])
    torch.testing.assert_close(maxsim_scores(q, packed), by_hand, atol=2e-2, rtol=0)


# -- Stanford ColBERT ------------------------------------------------------------------------------
@pytest.mark.parametrize("bin_weights,attend", [(False, False), (True, True)])
def test_stanford_colbert_folder_matches_reference(tmp_path, tiny_bert_dir, bin_weights, attend):
    folder = write_stanford(tmp_path / "colbert", tiny_bert_dir, bin_weights, attend_to_mask_tokens=attend)
    assert (folder / ("pytorch_model.bin" if bin_weights else "model.safetensors")).is_file()
    enc = load_encoder(str(folder))
    c = enc.config
    assert (c.dim, c.query_maxlen, c.doc_maxlen, c.query_marker, c.doc_marker) == (
        DIM, QLEN, DLEN, "[unused0]", "[unused1]")
    assert c.mask_punctuation and c.attend_to_mask_tokens == attend
    _check_against_reference(enc, stanford_reference(folder, attend))


def test_stanford_colbert_without_metadata_uses_colbert_defaults(tmp_path, tiny_bert_dir):
    folder = write_stanford(tmp_path / "colbert", tiny_bert_dir)
    (folder / "artifact.metadata").unlink()
    c = load_encoder(str(folder)).config
    assert (c.dim, c.query_maxlen, c.doc_maxlen, c.query_marker) == (DIM, 32, 220, "[unused0]")


def test_stanford_colbert_l2_similarity_is_refused(tmp_path, tiny_bert_dir):
    folder = write_stanford(tmp_path / "colbert", tiny_bert_dir, similarity="l2")
    with pytest.raises(ModelError, match="similarity 'l2'"):
        load_encoder(str(folder))


def test_stanford_colbert_missing_projection_is_refused(tmp_path, tiny_bert_dir):
    folder = write_stanford(tmp_path / "colbert", tiny_bert_dir)
    state = load_file(str(folder / "model.safetensors"))
    del state["linear.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="no tensor 'linear.weight'"):
        load_encoder(str(folder))


# -- PyLate ----------------------------------------------------------------------------------------
PYLATE_CASES = {
    # PyLate's own default: "[Q] "/"[D] " added to the tokenizer, Transformer at the folder root
    "root-added-prefixes": dict(transformer_path="", dims=(DIM,), prefixes=("[Q] ", "[D] "),
                                bin_weights=False, attend=False, words=list(string.punctuation)),
    # converted Stanford models (answerai-colbert-small-v1): 0_Transformer, [unusedN] prefixes; two Dense
    # layers in pickles and a custom skiplist
    "subfolder-two-dense": dict(transformer_path="0_Transformer", dims=(16, DIM),
                                prefixes=("[unused0]", "[unused1]"), bin_weights=True, attend=True,
                                words=["!", ",", ".", "fish"]),
}


@pytest.mark.parametrize("case", PYLATE_CASES)
def test_pylate_folder_matches_reference(tmp_path, tiny_bert_dir, case):
    p = PYLATE_CASES[case]
    folder = write_pylate(tmp_path / "pylate", tiny_bert_dir, p["transformer_path"], p["dims"], p["prefixes"],
                          p["bin_weights"], attend_to_expansion_tokens=p["attend"], skiplist_words=p["words"])
    enc = load_encoder(str(folder))
    c = enc.config
    assert (c.dim, c.query_maxlen, c.doc_maxlen) == (DIM, QLEN, DLEN)
    assert (c.query_marker, c.doc_marker) == p["prefixes"] and c.attend_to_mask_tokens == p["attend"]
    n_dense = len(p["dims"])
    ref = pylate_reference(folder, p["transformer_path"], n_dense, p["prefixes"], p["words"], p["attend"])
    _check_against_reference(enc, ref)
    if "fish" in p["words"]:
        fish = enc.tokenizer.convert_tokens_to_ids("fish")
        assert fish not in enc.encode_documents(DOCS[:1]).token_ids.tolist()


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(do_query_expansion=False), "do_query_expansion"),
        (dict(model_type="SentenceTransformer"), "not a PyLate ColBERT model"),
        (dict(query_prefix="[NOT-ADDED] "), "lacks the prefix token"),
    ],
)
def test_pylate_unsupported_settings_are_refused(tmp_path, tiny_bert_dir, change, message):
    folder = write_pylate(tmp_path / "pylate", tiny_bert_dir, **change)
    with pytest.raises(ModelError, match=message):
        load_encoder(str(folder))


def test_pylate_dense_with_bias_is_refused(tmp_path, tiny_bert_dir):
    folder = write_pylate(tmp_path / "pylate", tiny_bert_dir)
    cfg = json.loads((folder / "1_Dense" / "config.json").read_text())
    (folder / "1_Dense" / "config.json").write_text(json.dumps({**cfg, "bias": True}))
    state = load_file(str(folder / "1_Dense" / "model.safetensors"))
    save_file({**state, "linear.bias": torch.ones(DIM)}, str(folder / "1_Dense" / "model.safetensors"))
    with pytest.raises(ModelError, match="bias"):
        load_encoder(str(folder))


def test_single_vector_sentence_transformer_is_refused(tmp_path, tiny_bert_dir):
    folder = tmp_path / "st"
    folder.mkdir()
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelError, match="without a Dense projection"):
        load_encoder(str(folder))


@pytest.mark.parametrize("cased", [False, True])
def test_pylate_do_lower_case(tmp_path, tiny_bert_dir, cased):
    """Accepted when the tokenizer already lowercases; refused for a cased tokenizer (not reproducible)."""
    folder = write_pylate(tmp_path / "pylate", tiny_bert_dir)
    if cased:
        AutoTokenizer.from_pretrained(folder, do_lower_case=False).save_pretrained(folder)
    sbert = {"max_seq_length": 512, "do_lower_case": True}
    (folder / "sentence_bert_config.json").write_text(json.dumps(sbert))
    if cased:
        with pytest.raises(ModelError, match="do_lower_case"):
            load_encoder(str(folder))
    else:
        assert load_encoder(str(folder)).config.query_marker == "[Q] "
