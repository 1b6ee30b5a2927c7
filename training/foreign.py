"""Loading checkpoints in other projects' layouts (Stanford ColBERT, PyLate).

Stanford ColBERT, as ``colbert-ai`` saves it (e.g. ``colbert-ir/colbertv2.0``)::

    config.json                             Hugging Face config, architectures ["HF_ColBERT"]
    model.safetensors | pytorch_model.bin   ``bert.*`` (backbone) and ``linear.weight`` [dim, hidden]
    tokenizer files
    artifact.metadata                       ColBERTConfig as JSON (dim, query_maxlen, doc_maxlen, ...)

PyLate, a sentence-transformers folder::

    modules.json                            a Transformer module (path "" or "0_Transformer"), Dense modules
    config_sentence_transformers.json       query_prefix, document_prefix, query_length, document_length, ...
    <transformer path>/                     Hugging Face weights + tokenizer holding the prefix tokens
    1_Dense/config.json                     {in_features, out_features, bias, activation_function}
    1_Dense/model.safetensors | pytorch_model.bin   {"linear.weight": [out, in]}

Both become an :class:`Encoder` whose vectors match what those projects compute: the marker token
after [CLS], queries padded with [MASK] to their full length and every position kept, documents
truncated with padding and the project's skiplist dropped, vectors L2-normalised.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from tessera.errors import ModelError
from tessera.training.checkpoints import quiet_transformers, without_hub_kernels
from tessera.training.config import EncoderConfig
from tessera.training.encoder import Encoder, MultiVectorModel

# Defaults of colbert-ai's ColBERTConfig (colbert/infra/config/settings.py).
_COLBERT_DEFAULTS = {
    "query_token_id": "[unused0]",
    "doc_token_id": "[unused1]",
    "query_maxlen": 32,
    "doc_maxlen": 220,
    "mask_punctuation": True,
    "attend_to_mask_tokens": False,
    "similarity": "cosine",
    "interaction": "colbert",
}
# Defaults of pylate.models.ColBERT when config_sentence_transformers.json leaves a value out.
_PYLATE_DEFAULTS = {
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 32,
    "document_length": 180,
    "attend_to_expansion_tokens": False,
    "do_query_expansion": True,
}
_IDENTITY = "torch.nn.modules.linear.Identity"


def load_foreign(path: Path, device: str = "cpu") -> Encoder:
    """Load a Stanford ColBERT or PyLate folder; ModelError for any other layout."""
    path = Path(path)
    modules = _pylate_modules(path)
    if modules is not None and any(_kind(m) == "Dense" for m in modules):
        return load_pylate(path, device, modules)
    if (path / "artifact.metadata").is_file() or "HF_ColBERT" in _architectures(path):
        return load_stanford(path, device)
    if modules is not None:
        raise ModelError(
            f"{path}: a sentence-transformers folder without a Dense projection module "
            f"(modules: {', '.join(m.get('type', '?') for m in modules)}); this is not a PyLate ColBERT model"
        )
    raise ModelError(
        f"{path}: not a recognised checkpoint layout. Expected one of: a Tessera checkpoint (tessera.json), "
        "a Stanford ColBERT folder (artifact.metadata, or config.json with architectures ['HF_ColBERT']), "
        "or a PyLate folder (modules.json with a Dense module)"
    )


# -- Stanford ColBERT ------------------------------------------------------------------------------
def load_stanford(path: Path, device: str = "cpu") -> Encoder:
    """A folder saved by colbert-ai (HF_ColBERT weights + artifact.metadata)."""
    meta = {**_COLBERT_DEFAULTS, **_stanford_metadata(path)}
    if meta["similarity"] != "cosine":
        raise ModelError(f"{path}: similarity {meta['similarity']!r} is not supported (only 'cosine' MaxSim)")
    if meta["interaction"] != "colbert":
        raise ModelError(f"{path}: interaction {meta['interaction']!r} is not supported (only 'colbert')")
    backbone, tokenizer = _load_backbone(path)
    weight = _read_tensor(path, "linear.weight")
    if meta.get("dim") is not None and int(meta["dim"]) != weight.shape[0]:
        raise ModelError(
            f"{path}: artifact.metadata says dim={meta['dim']} but linear.weight is {tuple(weight.shape)}"
        )
    config = EncoderConfig(
        backbone=str(path),
        dim=int(weight.shape[0]),
        query_maxlen=int(meta["query_maxlen"]),
        doc_maxlen=int(meta["doc_maxlen"]),
        query_marker=meta["query_token_id"],
        doc_marker=meta["doc_token_id"],
        mask_punctuation=bool(meta["mask_punctuation"]),
        attend_to_mask_tokens=bool(meta["attend_to_mask_tokens"]),
    )
    encoder = _build(path, backbone, tokenizer, weight, config, device)
    if config.mask_punctuation:
        # colbert-ai skips the first token id of each punctuation symbol's encoding.
        skip = set()
        for sym in string.punctuation:
            ids = tokenizer.encode(sym, add_special_tokens=False)
            if ids:
                skip.add(int(ids[0]))
        encoder.skiplist = torch.tensor(sorted(skip), dtype=torch.long)
    return encoder


def _stanford_metadata(path: Path) -> dict:
    file = path / "artifact.metadata"
    if not file.is_file():
        return {}
    meta = _read_json(file)
    if isinstance(meta, dict) and isinstance(meta.get("config"), dict):  # older colbert-ai nests it
        meta = meta["config"]
    if not isinstance(meta, dict):
        raise ModelError(f"{file}: expected a JSON object")
    return {k: v for k, v in meta.items() if v is not None}


def _architectures(path: Path) -> list[str]:
    file = path / "config.json"
    if not file.is_file():
        return []
    try:
        return list(json.loads(file.read_text()).get("architectures") or [])
    except (json.JSONDecodeError, AttributeError):
        return []


# -- PyLate ----------------------------------------------------------------------------------------
def load_pylate(path: Path, device: str = "cpu", modules: list[dict] | None = None) -> Encoder:
    """A folder saved by pylate.models.ColBERT (sentence-transformers layout)."""
    modules = modules if modules is not None else _pylate_modules(path)
    if not modules:
        raise ModelError(f"{path}: modules.json is missing or empty")
    st_file = path / "config_sentence_transformers.json"
    st = _read_json(st_file) if st_file.is_file() else {}
    model_type = st.get("model_type", "ColBERT")
    if model_type != "ColBERT":
        raise ModelError(f"{path}: a sentence-transformers {model_type!r} model, not a PyLate ColBERT model")
    cfg = {**_PYLATE_DEFAULTS, **{k: v for k, v in st.items() if v is not None}}
    if not cfg["do_query_expansion"]:
        raise ModelError(
            f"{path}: do_query_expansion=false (queries not padded with [MASK]) is not supported; "
            "Tessera always expands queries to query_length"
        )
    if cfg["query_prefix"] == "" or cfg["document_prefix"] == "":
        raise ModelError(
            f"{path}: empty query/document prefixes are not supported (Tessera inserts a marker token)"
        )

    if _kind(modules[0]) != "Transformer":
        raise ModelError(f"{path}: the first module must be a Transformer, found {modules[0].get('type')!r}")
    transformer_dir = path / modules[0].get("path", "")
    others = [m for m in modules[1:] if _kind(m) != "Dense"]
    if others:
        raise ModelError(
            f"{path}: unsupported module(s) after the Transformer: "
            f"{', '.join(m.get('type', '?') for m in others)} (a PyLate ColBERT model has only Dense modules)"
        )
    _check_lower_case(transformer_dir)
    backbone, tokenizer = _load_backbone(transformer_dir)
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise ModelError(f"{transformer_dir}: the tokenizer has no [MASK] token to expand queries with")
    vocab = tokenizer.get_vocab()
    for prefix in (cfg["query_prefix"], cfg["document_prefix"]):
        if prefix not in vocab:
            raise ModelError(
                f"{transformer_dir}: the tokenizer lacks the prefix token {prefix!r} that PyLate adds "
                "when it saves a model"
            )
    weight = _compose_dense(path, modules[1:])
    words = cfg.get("skiplist_words")
    words = list(string.punctuation) if words is None else list(words)
    config = EncoderConfig(
        backbone=str(transformer_dir),
        dim=int(weight.shape[0]),
        query_maxlen=int(cfg["query_length"]),
        doc_maxlen=int(cfg["document_length"]),
        query_marker=cfg["query_prefix"],
        doc_marker=cfg["document_prefix"],
        mask_punctuation=bool(words),
        attend_to_mask_tokens=bool(cfg["attend_to_expansion_tokens"]),
    )
    encoder = _build(path, backbone, tokenizer, weight, config, device)
    # PyLate's skiplist: convert_tokens_to_ids of each word (config_sentence_transformers.json).
    ids = {tokenizer.convert_tokens_to_ids(w) for w in words}
    encoder.skiplist = torch.tensor(sorted(i for i in ids if i is not None), dtype=torch.long)
    return encoder


def _pylate_modules(path: Path) -> list[dict] | None:
    file = path / "modules.json"
    if not file.is_file():
        return None
    modules = _read_json(file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelError(f"{file}: expected a JSON list of modules")
    return sorted(modules, key=lambda m: int(m.get("idx", 0)))


def _kind(module: dict) -> str:
    """Class name of a modules.json entry ("sentence_transformers.models.Transformer" -> "Transformer")."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _check_lower_case(transformer_dir: Path) -> None:
    file = transformer_dir / "sentence_bert_config.json"
    if file.is_file() and _read_json(file).get("do_lower_case"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(transformer_dir)
        if tok.tokenize("Retrieval With ColBERT") != tok.tokenize("retrieval with colbert"):
            raise ModelError(f"{file}: do_lower_case=true with a cased tokenizer is not supported")


def _compose_dense(path: Path, modules: list[dict]) -> torch.Tensor:
    """One [dim, hidden] matrix equal to the chain of bias-free, activation-free Dense layers."""
    weight: torch.Tensor | None = None
    for module in modules:
        folder = path / module.get("path", "")
        cfg = _read_json(folder / "config.json")
        activation = cfg.get("activation_function", _IDENTITY)
        if activation != _IDENTITY:
            raise ModelError(f"{folder}: activation {activation!r} is not supported (only Identity)")
        w = _read_tensor(folder, "linear.weight").float()
        if cfg.get("bias", True):
            bias = _read_tensor(folder, "linear.bias", required=False)
            if bias is not None and bool(bias.abs().max() > 0):
                raise ModelError(f"{folder}: a Dense layer with a bias is not supported")
        if cfg.get("use_residual"):
            in_f, out_f = int(cfg["in_features"]), int(cfg["out_features"])
            w = w + (_read_tensor(folder, "residual.weight").float() if in_f != out_f else torch.eye(out_f))
        if weight is not None and w.shape[1] != weight.shape[0]:
            raise ModelError(
                f"{folder}: in_features {w.shape[1]} does not follow the previous layer's {weight.shape[0]}"
            )
        weight = w if weight is None else w @ weight
    if weight is None:
        raise ModelError(f"{path}: no Dense module")
    return weight


# -- shared ----------------------------------------------------------------------------------------
def _build(
    path: Path, backbone, tokenizer, weight: torch.Tensor, config: EncoderConfig, device: str
) -> Encoder:
    hidden = backbone.config.hidden_size
    if weight.ndim != 2 or weight.shape[1] != hidden:
        raise ModelError(f"{path}: projection shape {tuple(weight.shape)} does not fit hidden size {hidden}")
    model = MultiVectorModel(backbone, config.dim)
    with torch.no_grad():
        model.linear.weight.copy_(weight.float())
    model.eval()
    try:
        return Encoder(model, tokenizer, config, device=device)
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None


def _load_backbone(folder: Path):
    """(backbone in fp32 without pooler, tokenizer); every backbone weight must come from the folder."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with quiet_transformers():
            try:
                model, info = AutoModel.from_pretrained(
                    folder, add_pooling_layer=False, output_loading_info=True
                )
            except TypeError:
                model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the backbone in {folder}: {exc}") from None
    missing = sorted(k for k in info.get("missing_keys", []) if "pooler" not in k)
    if missing:
        raise ModelError(f"{folder}: backbone weights missing from the checkpoint: {', '.join(missing[:5])}")
    return without_hub_kernels(model.float()), tokenizer


def _read_json(file: Path):
    try:
        return json.loads(Path(file).read_text())
    except FileNotFoundError:
        raise ModelError(f"{file}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file}: invalid JSON ({exc})") from None


def _read_tensor(folder: Path, name: str, required: bool = True) -> torch.Tensor | None:
    """One tensor from model.safetensors / pytorch_model.bin in ``folder`` (sharded checkpoints too)."""
    from safetensors import safe_open

    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        file = folder / single
        if (folder / index).is_file():
            shard = _read_json(folder / index).get("weight_map", {}).get(name)
            if shard is None:
                continue
            file = folder / shard
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device="cpu") as f:
                if name in f.keys():
                    return f.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            if name in state:
                return state[name]
    if required:
        raise ModelError(f"{folder}: no tensor {name!r} in model.safetensors or pytorch_model.bin")
    return None
