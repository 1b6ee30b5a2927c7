"""``tessera train``: train a multi-vector model on a BEIR-layout folder."""

from __future__ import annotations

import argparse
from dataclasses import fields

from tessera.training.objectives import OBJECTIVES
from tessera.training.trainer import TrainConfig, Trainer

_HELP = {
    "data": "BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)",
    "out": "output folder: checkpoints, resume state, and the final model in OUT/model",
    "objective": "training objective: colbert; xtr (in-batch token retrieval); crisp (k-means clustered "
    "representatives); dupmae (pre-training on unlabelled text, e.g. with --pairs crops); dense "
    "(contrastive fine-tuning of a DupMAE model, e.g. --init OUT/model of a dupmae run)",
    "pairs": "'qrels' (labelled queries) or 'crops' (two random crops of each document; no labels needed)",
    "backbone": "Hugging Face checkpoint folder or hub id of the BERT-family backbone",
    "init": "start from an existing checkpoint (folder, hub id or 'default'; dense/dupmae: a DupMAE one)",
    "dim": "vector dimension (dupmae/dense: of the projected [CLS] part)",
    "negatives": "hard negatives per query (plus in-batch negatives)",
    "negatives_from": "hard-negative source: bm25, model, or bm25+model (model-mined ones replace BM25's "
    "after --model-negatives-at of the run)",
    "lora_rank": "LoRA rank over the backbone (0: fine-tune every weight)",
    "teacher_scores": "TSV of query-id, doc-id, teacher score for KL distillation",
    "grad_accum": "micro-batches per optimiser step",
    "save_every": "steps between resumable checkpoints",
    "device": "cpu or cuda",
    "amp": "bf16 mixed precision on CUDA",
    "threads": "torch CPU threads (default: torch's choice)",
    "k_train": "xtr: document tokens each query token retrieves from the whole batch",
    "xtr_temperature": "xtr: softmax temperature over the normalised XTR scores",
    "crisp": "crisp variant: C{q}x{d} fixed cluster counts (C4x8, C8x32; q=0 leaves queries unclustered) "
    "or R{f} / R{fq}x{fd} fractions of each text's tokens (R0.25, R0.5)",
    "cluster_iters": "crisp: Lloyd (k-means) iterations in each forward pass",
    "encoder_mask": "dupmae: fraction of ordinary tokens masked for the encoder's masked-LM loss",
    "decoder_mask": "dupmae: fraction of tokens each position of the enhanced decoder cannot see",
    "bow_weight": "dupmae: weight of the bag-of-words loss",
    "bow_dim": "dupmae/dense: hashed buckets of the bag-of-words part of the dense vector (0: [CLS] only)",
    "bow_topk": "dupmae/dense: pooled vocabulary entries kept in the bag-of-words part",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a multi-vector model",
        description="Train a multi-vector model. Re-running with the same --out resumes after a kill.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict = {"help": _HELP.get(f.name, f.name.replace("_", " ")), "dest": f.name}
        if f.name == "out":
            kwargs["required"] = True
        if f.name == "objective":
            kwargs["choices"] = sorted(OBJECTIVES)
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", **kwargs)
            continue
        typ = {"int": int, "float": float}.get(str(f.type).split(" | ")[0], str)
        if f.name != "out":
            kwargs["default"] = f.default
        p.add_argument(flag, type=typ, **kwargs)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    path = Trainer(config).train()
    print(path)
    return 0
