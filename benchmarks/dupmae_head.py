"""Time the DupMAE dense model's bag-of-words head in training, full logits vs top-k recompute (A/B).

    python benchmarks/dupmae_head.py --data /work/shared/data/scifact --docs 64 --reps 5 --threads 2

Forward and backward of ``DupMAEModel.represent`` over one batch of real documents with the real
MiniLM MLM head (the part of a ``--objective dense`` step that the two paths change), interleaved A/B,
medians. Also checks that both paths give the same vectors and gradients. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import tessera.training.dupmae as dupmae
from tessera.datasets import load_corpus
from tessera.training.checkpoints import new_encoder
from tessera.training.config import EncoderConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--docs", type=int, default=64, help="documents per batch (16 queries x (1 + 3 negatives))")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = new_encoder(EncoderConfig(backbone="minilm", kind="dupmae", dim=128, bow_dim=256, bow_topk=64))
    texts = [d.full_text for d in list(load_corpus(args.data / "corpus.jsonl").values())[: args.docs]]
    ids, mask = encoder.tokenize_documents(texts)
    ordinary = encoder.ordinary_mask(ids, mask)
    model = encoder.model
    with torch.no_grad():
        hidden = model.encode_hidden(ids, mask)
    split = dupmae.split_head

    def step(fast: bool) -> tuple[float, torch.Tensor, torch.Tensor]:
        dupmae.split_head = split if fast else (lambda head: None)
        model.zero_grad()
        h = hidden.clone().requires_grad_(True)
        t0 = time.perf_counter()
        out = model.represent(h, ordinary)
        out.square().sum().backward()
        elapsed = time.perf_counter() - t0
        dupmae.split_head = split
        return elapsed, out.detach(), h.grad

    times: dict[str, list[float]] = {"full": [], "topk": []}
    for _ in range(args.reps):
        for name, fast in (("full", False), ("topk", True)):
            elapsed, out, grad = step(fast)
            times[name].append(elapsed)
            if name == "full":
                ref = (out, grad)
            else:
                torch.testing.assert_close(out, ref[0], rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(grad, ref[1], rtol=1e-3, atol=1e-5)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"docs": args.docs, "tokens": int(mask.sum()), "threads": args.threads,
                      "median_s": med, "speedup": med["full"] / med["topk"], "times_s": times}))


if __name__ == "__main__":
    main()
