"""PyLate's side of ``tessera bench encode --pylate PYTHON``, run by PyLate's own interpreter.

Standalone on purpose (it imports pylate and torch, never tessera): PyLate lives in a virtual
environment of its own (benchmarks/peers/setup_pylate.sh). It loads a ColBERT model over the given
backbone, prints ``{"ready": ...}``, then answers one JSON command per stdin line:

- ``{"op": "docs", "threads": T, "batch_size": B}``: encode the documents of the texts file once;
  answers ``{"seconds": s, "docs": n, "vectors": v}``.
- ``{"op": "queries", "threads": T}``: encode each query of the texts file alone; answers
  ``{"latencies_ms": [...]}``.
- ``{"op": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", required=True, help="Hugging Face folder of the backbone")
    p.add_argument("--texts", required=True, help='JSON file {"docs": [...], "queries": [...]}')
    p.add_argument("--doc-maxlen", type=int, default=180)
    p.add_argument("--query-maxlen", type=int, default=32)
    p.add_argument("--dim", type=int, default=128)
    args = p.parse_args()

    import pylate
    import torch
    from pylate import models

    with open(args.texts) as f:
        texts = json.load(f)
    model = models.ColBERT(
        model_name_or_path=args.backbone,
        document_length=args.doc_maxlen,
        query_length=args.query_maxlen,
        embedding_size=args.dim,
        device="cpu",
    )
    model.eval()
    print(json.dumps({"ready": True, "pylate": pylate.__version__, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "quit":
            break
        torch.set_num_threads(int(cmd.get("threads") or torch.get_num_threads()))
        if op == "docs":
            t0 = time.perf_counter()
            out = model.encode(
                texts["docs"], batch_size=int(cmd.get("batch_size", 32)), is_query=False, show_progress_bar=False
            )
            seconds = time.perf_counter() - t0
            reply = {"seconds": seconds, "docs": len(out), "vectors": int(sum(len(v) for v in out))}
        elif op == "queries":
            model.encode(texts["queries"][:3], is_query=True, show_progress_bar=False)  # warm up
            lat = []
            for q in texts["queries"]:
                t0 = time.perf_counter()
                model.encode([q], is_query=True, show_progress_bar=False)
                lat.append((time.perf_counter() - t0) * 1000)
            reply = {"latencies_ms": lat}
        else:
            reply = {"error": f"unknown op {op!r}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
