"""``tessera demo``: the main job on the embedded defaults.

Encodes the bundled sample corpus (Tessera's own documentation, split into passages) with the
``default`` model and answers a few questions, printing the top passages.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SAMPLE_CORPUS = Path(__file__).parent / "sample" / "corpus.jsonl"
DEMO_QUERIES = [
    "How do I run the test suite on a fresh machine?",
    "Which backbone does the default model use and what licence does it have?",
    "How is MaxSim late interaction scored?",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="index the bundled sample corpus and answer a few queries")
    p.add_argument("--model", default="default", help="model name, checkpoint folder or hub id")
    p.add_argument("--k", type=int, default=3, help="passages to show per query")
    p.add_argument("query", nargs="*", help="questions to ask (default: three built-in ones)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tessera.datasets import load_corpus
    from tessera.scoring import maxsim_topk
    from tessera.training.checkpoints import load_encoder

    corpus = load_corpus(SAMPLE_CORPUS)
    ids = list(corpus)
    t0 = time.perf_counter()
    encoder = load_encoder(args.model)
    print(f"model {args.model!r} loaded in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    docs = encoder.encode_documents([corpus[i].full_text for i in ids], progress=True, desc="indexing sample")
    print(f"indexed {len(ids)} passages ({docs.vectors.shape[0]} token vectors) in {time.perf_counter() - t0:.1f}s")
    queries = args.query or DEMO_QUERIES
    q = encoder.encode_queries(queries)
    scores, idx = maxsim_topk(q, docs, args.k)
    for qi, query in enumerate(queries):
        print(f"\nQ: {query}")
        for rank, (s, j) in enumerate(zip(scores[qi].tolist(), idx[qi].tolist(), strict=False), 1):
            doc = corpus[ids[j]]
            snippet = " ".join(doc.text.split())[:160]
            print(f"  {rank}. [{s:6.2f}] {doc.title} — {snippet}")
    return 0
