"""PyLate (1.6.0) with its default PLAID backend, fast-plaid (1.4.6.2110, torch 2.11.0), fed with
Tessera's embeddings; runs in ./venv. The index is built by ``pylate.indexes.PLAID`` from the dumped
document vectors (PyLate's encoder is bypassed) with 2-bit residuals, like Tessera's, and PyLate's
search defaults otherwise (n_ivf_probe 8, n_full_scores 8192). Latency is PyLate's index call for one
query (its id mapping included). See ../peer_protocol.py for the protocol.
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

NBITS = 2


def open_index(folder: Path, threads: int, override: bool):
    from pylate import indexes

    return indexes.PLAID(
        index_folder=str(folder.parent),
        index_name=folder.name,
        override=override,
        nbits=NBITS,
        show_progress=False,
        device="cpu",
        num_threads=threads,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dump", type=Path, help="folder written by tessera bench search --peers")
    ap.add_argument("--index", type=Path, help="index folder (reused when built from the same dump)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warm-up", action="store_true", help="build and search a tiny index, exit")
    args = ap.parse_args()
    claim_stdout()
    torch.set_num_threads(args.threads)
    tmp = None
    if args.warm_up:
        tmp = Path(tempfile.mkdtemp(prefix="pylate-warm-"))
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
    marker = args.index.with_name(args.index.name + ".tessera-dump.json")
    fingerprint = dump["meta"]["fingerprint"]
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        build_s = json.loads(marker.read_text())["build_s"]
        index = open_index(args.index, args.threads, override=False)
        log(f"pylate-fastplaid: reusing the index at {args.index} (built in {build_s:.1f} s)")
    else:
        shutil.rmtree(args.index, ignore_errors=True)
        args.index.parent.mkdir(parents=True, exist_ok=True)
        off = dump["offsets"]
        docs = [
            torch.from_numpy(np.asarray(dump["vectors"][off[i] : off[i + 1]], dtype=np.float32))
            for i in range(len(dump["lengths"]))
        ]
        t0 = time.perf_counter()
        index = open_index(args.index, args.threads, override=True)
        index.add_documents(documents_ids=[str(i) for i in range(len(docs))], documents_embeddings=docs)
        build_s = time.perf_counter() - t0
        del docs
        marker.write_text(json.dumps({"fingerprint": fingerprint, "build_s": build_s}))
    queries = torch.from_numpy(np.ascontiguousarray(dump["queries"], dtype=np.float32))

    def search(q: int, k: int):
        rows = index(queries[q : q + 1], k=k)[0]
        return [int(r["id"]) for r in rows], [float(r["score"]) for r in rows]

    import fast_plaid
    import pylate

    n_vectors = int(dump["lengths"].sum())
    ready = {
        "engine": "pylate-fastplaid",
        "build_s": round(build_s, 2),
        "index_bytes_per_vector_disk": round(folder_bytes(args.index) / max(1, n_vectors), 2),
        "bytes_per_vector": 4 + int(dump["meta"]["dim"]) * NBITS // 8,
        "torch": torch.__version__,
        "pylate": pylate.__version__,
        "fast_plaid": getattr(fast_plaid, "__version__", "1.4.6.2110"),
        "settings": {"nbits": NBITS, "n_ivf_probe": 8, "n_full_scores": 8192},
    }
    if args.warm_up:
        log("pylate-fastplaid warm-up search:", search(0, 10), ready)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    serve(search, ready)


if __name__ == "__main__":
    main()
