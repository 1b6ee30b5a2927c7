"""Helpers shared by the service and client tests: a small corpus, in-process servers."""

from __future__ import annotations

import random

WORDS = """cell cells protein gene genes cancer patients study results treatment disease effect risk human
clinical increased expression levels mice analysis associated found role high activity function response
virus brain blood tumor immune drug therapy dna rna age women men children health care test red green
blue cat dog fish bird tree water fire earth air light dark sun moon star city country model data query
document search index vector token score retrieval""".split()


def make_docs(n: int, seed: int = 0, prefix: str = "d") -> list[dict]:
    """Deterministic documents with metadata (year, lang, even, score, nested src.kind)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30)))
        meta = {
            "year": 2000 + i % 25,
            "lang": ("en", "fr", "de")[i % 3],
            "even": i % 2 == 0,
            "score": round(rng.random(), 3),
            "src": {"kind": "journal" if i % 4 else "preprint"},
        }
        docs.append({"id": f"{prefix}{i}", "text": text, "metadata": meta})
    return docs


def start_server(data_dir, **overrides):
    from tessera.service.server import ServerConfig, ServerThread

    return ServerThread(ServerConfig(data_dir=data_dir, port=0, workers=8, **overrides)).start()


def reference_index(model_dir, batches, **settings):
    """An index built in-process, independently of the service, from the same upsert batches."""
    from tessera.index import MultiVectorIndex
    from tessera.training.checkpoints import load_encoder

    enc = load_encoder(str(model_dir))
    index = MultiVectorIndex.create(None, enc.dim, nbits=2, **settings)
    for batch in batches:
        index.add([d["id"] for d in batch], enc.encode_documents([d["text"] for d in batch], progress=False))
    return enc, index


def batched(items, n):
    return [items[i : i + n] for i in range(0, len(items), n)]
