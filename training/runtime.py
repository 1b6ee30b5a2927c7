"""Inference backends of the multi-vector encoder: torch or ONNX Runtime, fp32 or dynamic int8.

A backend replaces only the model's forward pass, ``(input_ids, attention_mask) -> [B, L, dim]``
L2-normalised float32 vectors (backbone + projection + normalisation). Tokenisation, the query and
document markers, [MASK] padding, the punctuation mask and CRISP reductions stay in ``Encoder``, so
every backend sees exactly the same inputs and the outputs differ only by arithmetic.

- ``torch``: the model itself; ``torch-int8`` is ``torch.ao.quantization.quantize_dynamic`` of its
  Linear layers.
- ``onnx``: ``torch.onnx.export`` of the model (LoRA adapters are already merged at load time) with
  eager attention, fused by ONNX Runtime's transformer optimizer (BERT-family backbones), run by an
  ``onnxruntime.InferenceSession``; ``onnx-int8`` is ``onnxruntime.quantization.quantize_dynamic`` of
  that graph (int8 weights, activations quantised per call).

Exported models are cached on disk under ``<cache>/onnx/<key>/`` where the key hashes the weights,
the backbone's configuration and the exporter and runtime versions, so a checkpoint is exported once.
``auto`` picks the adopted default (see ``AUTO``) when ONNX Runtime is installed, else torch fp32.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tessera.errors import ModelError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
QUANTIZE = ("int8",)
SPECS = ("torch", "torch-int8", "onnx", "onnx-int8")
# What ``auto`` means, per kind of text, when onnxruntime is installed (measured by `tessera bench encode`
# on this project's 2-core CPU; see docs/benchmarks.md). Without onnxruntime ``auto`` is torch fp32.
AUTO = {"queries": "onnx-int8", "documents": "onnx-int8"}
ONNX_FORMAT = 2  # bump when the exported graph changes, so cached exports are rebuilt
OPSET = 17
FUSED_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert"}

_export_lock = threading.Lock()


@dataclass(frozen=True)
class Runtime:
    """Which backend runs the forward pass: ``backend`` (torch, onnx), ``quantize`` (None, int8),
    ``threads`` (intra-op threads; None: the library's default, one per core)."""

    backend: str = "torch"
    quantize: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ModelError(f"unknown encoder backend {self.backend!r} (known: {', '.join(BACKENDS)})")
        if self.quantize not in (None, *QUANTIZE):
            raise ModelError(f"unknown quantisation {self.quantize!r} (known: none, {', '.join(QUANTIZE)})")
        if self.threads is not None and self.threads <= 0:
            raise ModelError(f"encoder threads must be positive, got {self.threads}")

    @property
    def name(self) -> str:
        """``torch``, ``torch-int8``, ``onnx`` or ``onnx-int8``."""
        return self.backend + (f"-{self.quantize}" if self.quantize else "")

    @property
    def is_reference(self) -> bool:
        """True for plain torch fp32 (the reference every other backend is compared with)."""
        return self.backend == "torch" and self.quantize is None

    @classmethod
    def parse(cls, spec: str, threads: int | None = None, kind: str = "queries") -> Runtime:
        """``torch``, ``torch-int8``, ``onnx``, ``onnx-int8`` or ``auto`` (the adopted default for
        ``kind``, queries or documents, when onnxruntime is installed; torch otherwise)."""
        text = (spec or "torch").strip().lower()
        if text == "auto":
            text = AUTO[kind] if onnx_available() else "torch"
        backend, _, quant = text.partition("-")
        if text not in SPECS:
            raise ModelError(f"unknown encoder backend {spec!r} (known: {', '.join(SPECS)}, auto)")
        return cls(backend, quant or None, threads)


def onnx_available() -> bool:
    """True when onnxruntime (and onnx, for exporting) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_onnx_dir() -> Path:
    """``<tessera cache>/onnx`` ($TESSERA_CACHE_DIR or ~/.cache/tessera)."""
    env = os.environ.get("TESSERA_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "tessera") / "onnx"


# -- torch --------------------------------------------------------------------------------------------


class TorchRunner:
    """The model's forward pass in torch, fp32 or with dynamically quantised int8 Linear layers."""

    def __init__(self, model: nn.Module, runtime: Runtime) -> None:
        self.runtime = runtime
        self.name = runtime.name
        if runtime.quantize == "int8":
            device = next(model.parameters()).device
            if device.type != "cpu":
                raise ModelError("torch int8 dynamic quantisation runs on the CPU only (use --device cpu)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
                model = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8
                )
        self.model = model
        self.device = next(self.model.parameters(), torch.empty(0)).device

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.runtime.threads is not None and torch.get_num_threads() != self.runtime.threads:
            torch.set_num_threads(self.runtime.threads)
        return _forward(self.model, ids.to(self.device), mask.to(self.device))


def _forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MultiVectorModel's forward (subclasses such as CRISP reduce afterwards, in Encoder)."""
    from tessera.training.encoder import MultiVectorModel

    return MultiVectorModel.forward(model, ids, mask)


# -- ONNX Runtime -------------------------------------------------------------------------------------


class _Forward(nn.Module):
    """What is exported: backbone + projection + L2 normalisation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _forward(self.model, input_ids, attention_mask)


def onnx_key(model: nn.Module) -> str:
    """Hash of everything an exported graph depends on: weights, backbone config, versions."""
    import onnxruntime

    h = hashlib.sha256()
    backbone_config = getattr(getattr(model, "backbone", None), "config", None)
    about = {
        "format": ONNX_FORMAT,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "config": backbone_config.to_dict() if backbone_config is not None else None,
        "class": type(model).__name__,
    }
    h.update(json.dumps(about, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export the model's forward pass (fp32, eager attention, dynamic batch and length) to ``path``."""
    m = copy.deepcopy(model).float().cpu().eval()
    backbone = getattr(m, "backbone", None)
    if backbone is not None and hasattr(backbone, "set_attn_implementation"):
        try:  # eager attention exports as the MatMul/Softmax pattern that ONNX Runtime fuses
            backbone.set_attn_implementation("eager")
        except (ValueError, AttributeError) as exc:  # pragma: no cover - backbones without eager attention
            log.debug("keeping the backbone's attention implementation (%s)", exc)
    # Two rows, one padded: the attention mask must not be traced away as all ones.
    vocab = int(getattr(getattr(backbone, "config", None), "vocab_size", 100) or 100)
    ids = torch.randint(5, max(6, vocab), (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    axes = {0: "batch", 1: "length"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in transformers' code
        torch.onnx.export(
            _Forward(m),
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["vectors"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "vectors": axes},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


@contextlib.contextmanager
def _quiet():
    """Silence the chatty INFO/WARNING logging and warnings of ONNX Runtime's offline tools."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _fuse(src: Path, dst: Path, model: nn.Module) -> bool:
    """Fuse attention, LayerNorm and GELU with ONNX Runtime's transformer optimizer (BERT family)."""
    config = getattr(getattr(model, "backbone", None), "config", None)
    model_type = FUSED_MODEL_TYPES.get(getattr(config, "model_type", ""))
    if model_type is None:
        return False
    from onnxruntime.transformers import optimizer

    try:
        with _quiet():
            opt = optimizer.optimize_model(
            str(src),
                model_type=model_type,
                num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size),
                opt_level=1,
            )
            opt.save_model_to_file(str(dst))
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    except Exception as exc:  # noqa: BLE001 - the unfused graph is still correct
        log.warning("ONNX Runtime's transformer optimizer failed (%s); using the unfused graph", exc)
        return False
    log.info("fused ONNX graph: %s", fused)
    return True


def _quantize(src: Path, dst: Path) -> None:
    """Dynamic int8: weights per output channel, activations per call; only the backbone's MatMul and
    Attention ops (the embedding tables and the final projection stay fp32: no speed to gain there, and
    quantising them costs agreement with fp32)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    keep_fp32 = [n.name for n in graph.node if n.op_type == "MatMul" and "/backbone/" not in n.name]
    with _quiet():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_exclude=keep_fp32,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def onnx_model_path(model: nn.Module, quantize: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The cached ONNX file of ``model`` (fp32, or int8 with ``quantize='int8'``), exported when missing."""
    if not onnx_available():
        raise ModelError("the ONNX backend needs onnxruntime and onnx: pip install 'tessera[onnx]'")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_onnx_dir()
    key = onnx_key(model)
    folder = root / key[:32]
    fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"
    target = int8 if quantize == "int8" else fp32
    if target.is_file():
        return target
    with _export_lock:
        if target.is_file():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
        try:
            if not fp32.is_file():
                log.info("exporting the encoder to ONNX (once per checkpoint): %s", fp32)
                raw = tmp / "raw.onnx"
                export_onnx(model, raw)
                fused = tmp / "fused.onnx"
                os.replace(fused if _fuse(raw, fused, model) else raw, fp32)
                (folder / "meta.json").write_text(json.dumps({"key": key, "format": ONNX_FORMAT}) + "\n")
            if quantize == "int8" and not int8.is_file():
                log.info("quantising the ONNX encoder to int8: %s", int8)
                _quantize(fp32, tmp / "int8.onnx")
                os.replace(tmp / "int8.onnx", int8)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class OnnxRunner:
    """The model's forward pass in an ONNX Runtime session (CPU); safe to call from several threads.

    The fused attention takes padding as per-row lengths: attention masks must be ones followed by
    zeros, as the encoder's tokenisation (right padding) always makes them."""

    def __init__(self, model: nn.Module, runtime: Runtime, cache_dir: str | Path | None = None) -> None:
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ModelError("the ONNX backend runs on the CPU only (use --device cpu or --backend torch)")
        import onnxruntime as ort

        self.runtime = runtime
        self.name = runtime.name
        self.path = onnx_model_path(model, runtime.quantize, cache_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if runtime.threads is not None:
            options.intra_op_num_threads = runtime.threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        types = {i.name: i.type for i in self.session.get_inputs()}
        self._int32 = {name for name, t in types.items() if t == "tensor(int32)"}

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feed = {}
        for name, t in (("input_ids", ids), ("attention_mask", mask)):
            arr = t.detach().cpu().numpy()
            feed[name] = arr.astype("int32" if name in self._int32 else "int64", copy=False)
        out = self.session.run(["vectors"], feed)[0]
        return torch.from_numpy(out)


def make_runner(
    model: nn.Module, runtime: Runtime, cache_dir: str | Path | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A callable running ``model``'s forward pass with ``runtime``'s backend."""
    from tessera.training.encoder import MultiVectorModel

    if not isinstance(model, MultiVectorModel):
        raise ModelError(f"backend {runtime.name!r} supports multi-vector models only, not {type(model).__name__}")
    if runtime.backend == "onnx":
        return OnnxRunner(model, runtime, cache_dir)
    return TorchRunner(model, runtime)


def use_backend(
    encoder,
    spec: str = "auto",
    threads: int | None = None,
    *,
    queries: bool = True,
    documents: bool = True,
    cache_dir: str | Path | None = None,
) -> None:
    """Set ``encoder``'s inference backend from a spec (``torch``, ``torch-int8``, ``onnx``, ``onnx-int8``,
    ``auto``) for queries and/or documents. With ``auto``, each kind gets its adopted default, and a model
    the ONNX backend cannot run (a dense model, a GPU device, a failed export) stays on torch, with a
    warning for a failure. Other specs fail with ``ModelError`` where they cannot be honoured."""
    auto = (spec or "").strip().lower() == "auto"
    kinds = [k for k, on in (("queries", queries), ("documents", documents)) if on]
    if not hasattr(encoder, "set_runtime"):  # e.g. DupMAE's dense encoder: torch only
        if auto or Runtime.parse(spec, threads).is_reference:
            return
        raise ModelError(f"backend {spec!r} supports multi-vector models only, not {type(encoder).__name__}")
    runners: dict[str, Runtime] = {k: Runtime.parse(spec, threads, kind=k) for k in kinds}
    for kind, rt in runners.items():
        try:
            encoder.set_runtime(rt, queries=kind == "queries", documents=kind == "documents", cache_dir=cache_dir)
        except ModelError as exc:
            if not auto:
                raise
            log.info("%s stay on torch: %s", kind, exc)
        except Exception as exc:  # noqa: BLE001 - export or session failures under auto: fall back
            if not auto:
                raise ModelError(f"backend {rt.name!r} failed: {exc}") from exc
            log.warning("%s stay on torch: backend %s failed (%s)", kind, rt.name, exc)
    log.info(
        "encoder backends: queries %s, documents %s",
        encoder.backend_name("queries"),
        encoder.backend_name("documents"),
    )


def add_backend_argument(parser, default: str = "torch", flag: str = "--backend", what: str = "encoding") -> None:
    """The ``--backend`` option of commands that encode."""
    parser.add_argument(
        flag,
        default=default,
        metavar="BACKEND",
        help=f"inference backend for {what}: torch, torch-int8, onnx, onnx-int8 (ONNX Runtime, pip install "
        f"'tessera[onnx]'), or auto ({AUTO['queries']} for queries and {AUTO['documents']} for documents where "
        f"onnxruntime is installed, else torch); default {default}",
    )
