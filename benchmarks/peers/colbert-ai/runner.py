"""colbert-ai (Stanford ColBERT, PLAID engine) fed with Tessera's embeddings; runs in ./venv.

The index is built by colbert-ai's own CollectionIndexer (its sampling, k-means, residual codec,
chunk files and IVF) with the model replaced by a stand-in that returns the dumped vectors of each
passage (the "passages" are document numbers), and searched by its IndexScorer (PLAID on the CPU,
with its C++ extensions) with PLAID's settings by k, set per call (ColBERT's Searcher keeps the
settings of its first call). See ../peer_protocol.py for the protocol.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peer_protocol import claim_stdout, folder_bytes, load_dump, log, serve  # noqa: E402


def plaid_settings(k: int) -> dict:
    if k <= 10:
        return {"ncells": 1, "centroid_score_threshold": 0.5, "ndocs": 256}
    if k <= 100:
        return {"ncells": 2, "centroid_score_threshold": 0.45, "ndocs": 1024}
    return {"ncells": 4, "centroid_score_threshold": 0.4, "ndocs": max(4 * k, 4096)}


class _Embeddings:
    """Stand-in for ColBERT's CollectionEncoder: passage text = document number."""

    def __init__(self, vectors, offsets):
        self.vectors, self.offsets = vectors, offsets

    def encode_passages(self, passages):
        idx = [int(p) for p in passages]
        parts = [np.asarray(self.vectors[self.offsets[i] : self.offsets[i + 1]]) for i in idx]
        doclens = [int(self.offsets[i + 1] - self.offsets[i]) for i in idx]
        embs = torch.from_numpy(np.concatenate(parts).astype(np.float32)) if parts else torch.empty(0, 128)
        return embs, doclens


def build(dump: dict, index_path: Path) -> float:
    import colbert.indexing.collection_indexer as ci
    from colbert.infra import ColBERTConfig, Run, RunConfig

    ci.Checkpoint = lambda *args, **kwargs: None  # no model: the vectors are given
    ci.CollectionEncoder = lambda config, checkpoint: _Embeddings(dump["vectors"], dump["offsets"])
    n_docs = len(dump["lengths"])
    config = ColBERTConfig(
        nbits=2,
        dim=int(dump["meta"]["dim"]),
        kmeans_niters=4,  # colbert-ai's default
        doc_maxlen=int(max(1, dump["lengths"].max())),
        query_maxlen=int(dump["queries"].shape[1]),
        index_path=str(index_path),
        checkpoint="tessera-embeddings",
        avoid_fork_if_possible=True,
        nranks=1,
    )
    index_path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with Run().context(RunConfig(nranks=1, root=str(index_path.parent))):
        ci.CollectionIndexer(config=config, collection=[str(i) for i in range(n_docs)], verbose=1).run([])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dump", type=Path, help="folder written by tessera bench search --peers")
    ap.add_argument("--index", type=Path, help="index folder (reused when built from the same dump)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warm-up", action="store_true", help="compile the C++ extensions on a tiny index, exit")
    args = ap.parse_args()
    claim_stdout()
    torch.set_num_threads(args.threads)
    tmp = None
    if args.warm_up:
        tmp = Path(tempfile.mkdtemp(prefix="colbert-warm-"))
        rng = np.random.default_rng(0)
        lengths = rng.integers(5, 30, 300)
        vecs = rng.standard_normal((int(lengths.sum()), 128)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        q = rng.standard_normal((2, 32, 128)).astype(np.float32)
        q /= np.linalg.norm(q, axis=2, keepdims=True)
        for name, arr in (("doc_vectors", vecs.astype(np.float16)), ("doc_lengths", lengths), ("queries", q)):
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps({"dim": 128, "fingerprint": "warm-up"}))
        args.dump, args.index = tmp, tmp / "index"
    dump = load_dump(args.dump)
    marker = args.index / "tessera-dump.json"
    fingerprint = dump["meta"]["fingerprint"]
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        build_s = json.loads(marker.read_text())["build_s"]
        log(f"colbert-ai: reusing the index at {args.index} (built in {build_s:.1f} s)")
    else:
        shutil.rmtree(args.index, ignore_errors=True)
        build_s = build(dump, args.index)
        marker.write_text(json.dumps({"fingerprint": fingerprint, "build_s": build_s}))

    from colbert.infra import ColBERTConfig
    from colbert.modeling.colbert import ColBERT
    from colbert.search.index_storage import IndexScorer

    ColBERT.try_load_torch_extensions(False)  # segmented_maxsim_cpp (normally loaded with the model)
    scorer = IndexScorer(str(args.index), use_gpu=False, load_index_with_mmap=False)
    base = ColBERTConfig.load_from_index(str(args.index))
    configs = {}
    queries = torch.from_numpy(np.ascontiguousarray(dump["queries"], dtype=np.float32))

    def search(q: int, k: int):
        if k not in configs:
            configs[k] = ColBERTConfig.from_existing(base, ColBERTConfig(**plaid_settings(k)))
        pids, scores = scorer.rank(configs[k], queries[q : q + 1])
        return pids[:k], scores[:k]

    n_vectors = int(dump["lengths"].sum())
    disk = folder_bytes(args.index)
    ready = {
        "engine": "colbert-ai",
        "build_s": round(build_s, 2),
        "index_bytes_per_vector_disk": round(disk / max(1, n_vectors), 2),
        # what its search reads per stored vector: centroid id (int32) + packed residual
        "bytes_per_vector": 4 + int(dump["meta"]["dim"]) * 2 // 8,
        "torch": torch.__version__,
        "settings": {str(k): plaid_settings(k) for k in (10, 100)},
    }
    if args.warm_up:
        log("colbert-ai warm-up search:", search(0, 10))
        shutil.rmtree(tmp, ignore_errors=True)
        return
    serve(search, ready)


if __name__ == "__main__":
    main()
