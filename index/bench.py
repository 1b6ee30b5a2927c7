"""``tessera bench search``: latency, recall against exact MaxSim and nDCG of every search method.

Ground truth is exact MaxSim over the original (uncompressed) token vectors, computed with
``tessera.scoring``; every method's recall@10 / recall@100 is measured against it. Latency is per
query, one query at a time, query encoding excluded (queries are encoded once, up front).
Document encodings (``tessera.eval``'s cache) and ground truth are cached on disk.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tessera.errors import DataError
from tessera.packed import PackedDocuments

log = logging.getLogger(__name__)

ALL_METHODS = ("exact", "plaid", "plaid-compressed", "plaid-wide", "xtr", "xtr-compressed", "prf", "prf-retrieve")
# PLAID with a wider first stage: PLAID's k<=100 candidate settings at k=10 (recall over speed)
WIDE = {"ncells": 2, "centroid_score_threshold": 0.45, "ndocs": 512}
_METHOD_CALLS = {  # entry name -> (index method, params)
    "exact": ("exact", {}),
    "plaid": ("plaid", {}),
    "plaid-compressed": ("plaid", {"full_rerank": False}),
    "plaid-wide": ("plaid", WIDE),
    "xtr": ("xtr", {}),
    "xtr-compressed": ("xtr", {"exact_tokens": False}),
    "prf": ("prf", {"prf_mode": "rerank"}),
    "prf-retrieve": ("prf", {"prf_mode": "retrieve"}),
}


@dataclass
class BenchData:
    name: str
    doc_ids: list[str]
    docs: PackedDocuments
    query_ids: list[str]
    queries: torch.Tensor  # [nq, Lq, dim] float32
    qrels: dict[str, dict[str, int]]
    encode_seconds: float | None = None  # query encoding, reported separately


def default_cache_dir() -> Path:
    """``tessera.eval``'s cache folder ($TESSERA_CACHE_DIR or ~/.cache/tessera)."""
    from tessera.eval.cache import default_cache_dir as eval_cache_dir

    return eval_cache_dir()


def load_encoded(data: Path, model: str, split: str, cache: Path) -> BenchData:
    """BEIR data encoded with ``model``. Document encodings go through ``tessera.eval``'s encoding
    cache (shared with ``tessera eval``: same key, so either command reuses the other's work)."""
    from tessera.datasets import load_beir
    from tessera.eval.cache import EncodingCache, corpus_fingerprint, model_fingerprint
    from tessera.training.checkpoints import load_encoder

    ds = load_beir(data, split)
    query_ids = [q for q in ds.queries if q in ds.qrels] or list(ds.queries)
    doc_ids = ds.doc_ids
    texts = [ds.corpus[d].full_text for d in doc_ids]
    encoder = load_encoder(model)
    settings = {"kind": "multi-vector", **encoder.config.to_dict()}
    store = EncodingCache(cache)
    key = store.key(
        model_fingerprint(encoder.model, encoder.tokenizer, settings),
        corpus_fingerprint(doc_ids, texts),
        settings,
    )
    docs = store.load_packed(key, len(doc_ids))
    if docs is None:
        docs = encoder.encode_documents(texts, progress=True, desc="encoding documents")
        store.save_packed(key, docs, {"model": model, "data": str(data), "docs": len(doc_ids)})
    else:
        log.info("document encodings from the cache (%s)", key[:16])
    t0 = time.perf_counter()
    queries = encoder.encode_queries([ds.queries[q] for q in query_ids])
    seconds = (time.perf_counter() - t0) / max(1, len(query_ids))
    return BenchData(data.name, doc_ids, docs, query_ids, queries, ds.qrels, seconds)


def synthetic_data(n_vectors: int, dim: int, n_queries: int, mean_len: int = 100, seed: int = 0) -> BenchData:
    """Clustered synthetic vectors; each query's relevant document is the one it was drawn from."""
    from tessera.index.synthetic import make_corpus, make_queries

    n_docs = max(1, n_vectors // mean_len)
    vocab = max(2000, min(50_000, n_vectors // 20))
    corpus = make_corpus(n_docs, dim, mean_len, vocab=vocab, topics=max(20, n_docs // 50), seed=seed)
    queries, targets = make_queries(corpus, n_queries, 32, seed=seed + 1)
    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    qrels = {q: {doc_ids[int(t)]: 1} for q, t in zip(query_ids, targets, strict=True)}
    return BenchData(f"synthetic-{n_vectors}", doc_ids, corpus.docs, query_ids, queries, qrels)


def ground_truth(data: BenchData, cache: Path | None, k: int = 100) -> list[list[str]]:
    """Exact MaxSim top-k on the original vectors (cached beside the encodings)."""
    from tessera.scoring import maxsim_topk

    h = hashlib.sha1()
    h.update(data.queries.numpy().tobytes())
    h.update(data.docs.lengths.numpy().tobytes())
    h.update(data.docs.vectors[:: max(1, data.docs.vectors.shape[0] // 4096)].numpy().tobytes())
    file = cache / "bench" / f"truth-{h.hexdigest()[:16]}-{k}.pt" if cache else None
    if file is not None and file.is_file():
        idx = torch.load(file)
    else:
        t0 = time.perf_counter()
        _, idx = maxsim_topk(data.queries, data.docs, k)
        log.info("exact ground truth on the original vectors: %.1f s", time.perf_counter() - t0)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(idx, file)
    return [[data.doc_ids[i] for i in row] for row in idx.tolist()]


def _recall(hits, truth, k: int) -> float:
    got = sum(len({h.id for h in row[:k]} & set(t[:k])) for row, t in zip(hits, truth, strict=True))
    return got / (k * len(truth))


def ir_metrics(run: dict, qrels: dict) -> dict:
    """nDCG@10, MAP@100 and judged recall@100 of ``run`` ({query: {doc: score}}) over its queries that
    have judgements in ``qrels`` (NaN when none has)."""
    import ir_measures
    from ir_measures import AP, R, nDCG

    judged = {q: qrels[q] for q in run if qrels.get(q)}
    res = ir_measures.calc_aggregate([nDCG @ 10, AP @ 100, R @ 100], judged, {q: run[q] for q in judged})
    return {"ndcg@10": res[nDCG @ 10], "map@100": res[AP @ 100], "judged_recall@100": res[R @ 100]}


def _ir_metrics(hits, data: BenchData) -> dict:
    run = {q: {h.id: h.score for h in row} for q, row in zip(data.query_ids, hits, strict=True)}
    return ir_metrics(run, data.qrels)


class _Engine:
    """One column of the benchmark: a Tessera method or a peer, run on blocks of queries."""

    def __init__(self, name: str, run, limit: int | None = None) -> None:
        self.name = name
        self._run = run  # (query numbers, k) -> (hits, per-query ms, [work counters per query])
        self.limit = limit
        self.hits: dict[int, dict[int, list]] = {10: {}, 100: {}}
        self.lat: dict[int, list[float]] = {10: [], 100: []}
        self.work: dict[str, int] = {}

    def run(self, queries: list[int], k: int) -> None:
        queries = [q for q in queries if self.limit is None or q < self.limit]
        if not queries:
            return
        hits, lat, work = self._run(queries, k)
        self.hits[k].update(zip(queries, hits, strict=True))
        self.lat[k].extend(lat)
        if k == 10:
            for st in work:
                for key, v in st.items():
                    if isinstance(v, int):
                        self.work[key] = self.work.get(key, 0) + v


def _ours(index, queries: torch.Tensor, method: str, params10: dict, params100: dict):
    def run(qs: list[int], k: int):
        hits, lat, work = [], [], []
        params = params10 if k <= 10 else params100
        for q in qs:
            t0 = time.perf_counter()
            h, st = index.search_with_stats(queries[q : q + 1], k=k, method=method, params=params)
            lat.append((time.perf_counter() - t0) * 1000)
            hits.extend(h)
            work.append(st)
        return hits, lat, work

    return run


def _peer(peer, doc_ids: list[str]):
    from tessera.index import Hit

    def run(qs: list[int], k: int):
        ids, scores, ms = peer.search(qs, k)
        hits = [
            [Hit(doc_ids[d], s) for d, s in zip(row, srow, strict=True)] for row, srow in zip(ids, scores, strict=True)
        ]
        return hits, ms, []

    return run


def _measure(engines: list[_Engine], n_queries: int, block: int) -> None:
    """Interleave the engines: every block of queries runs on each engine in turn (the order rotating
    from block to block), at k=10 and then at k=100, so that load from other processes on the
    machine falls on all of them alike. One warm-up query each first."""
    for k in (10, 100):
        for e in engines:
            e._run([0], k)
        for r, start in enumerate(range(0, n_queries, block)):
            qs = list(range(start, min(n_queries, start + block)))
            for e in engines[r % len(engines) :] + engines[: r % len(engines)]:
                e.run(qs, k)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def run_benchmark(
    data: BenchData,
    methods: list[str],
    *,
    nbits: int = 2,
    threads: int = 1,
    keep_vectors: bool = True,
    index_dir: Path | None = None,
    cache: Path | None = None,
    exact_queries: int = 50,
    settings: dict | None = None,
    peers: list[str] | None = None,
    peers_dir: Path | None = None,
    block: int = 10,
) -> dict:
    """Build an index over ``data`` and measure each method (and each peer, side by side in the same
    run, interleaved by blocks of ``block`` queries); returns {method or peer: metrics}."""
    import faiss

    from tessera.index import Hit, MultiVectorIndex, kernels
    from tessera.index import peers as peer_mod

    unknown = [m for m in methods if m not in _METHOD_CALLS]
    if unknown:
        raise DataError(f"unknown benchmark method(s) {', '.join(unknown)} (known: {', '.join(ALL_METHODS)})")
    peers = list(peers or [])
    peers_dir = peers_dir or Path("benchmarks/peers")
    for name in peers:
        peer_mod.peer_python(peers_dir, name)  # fail early when a peer is not set up
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    truth = ground_truth(data, cache)
    tmp = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    if index_dir is None:
        index_dir = tmp / "index"
    started: list = []
    try:
        t0 = time.perf_counter()
        index = MultiVectorIndex.create(
            index_dir, data.docs.dim, nbits=nbits, keep_vectors=keep_vectors, **(settings or {})
        )
        index.add(data.doc_ids, data.docs)
        index.flush()
        build_s = time.perf_counter() - t0
        st = index.stats()
        log.info("index built in %.1f s: %s", build_s, st)
        compressed = 4 + data.docs.dim * nbits // 8
        meta = {
            "build_s": round(build_s, 2),
            "documents": st["documents"],
            "vectors": st["vectors"],
            "ncentroids": st["ncentroids"],
            "quantizer": st["quantizer"],
            "index_bytes_per_vector_disk": round(st["bytes_per_vector_on_disk"], 2),
            "index_bytes_per_vector_memory": round(st["bytes_per_vector_in_memory"], 2),
            "threads": threads,
            "scoring_kernel": kernels.fused_kernel(),  # compiled CPU kernel in use, or "torch"
            "queries": len(data.query_ids),
            "query_encode_ms": round(data.encode_seconds * 1000, 2) if data.encode_seconds else None,
        }
        engines = []
        for name in methods:
            method, params = _METHOD_CALLS[name]
            if name in ("plaid-compressed", "xtr-compressed") and not keep_vectors:
                continue
            params100 = {} if name == "plaid-wide" else params  # at k=100 PLAID's defaults are wide already
            limit = exact_queries if method == "exact" else None
            engines.append(_Engine(name, _ours(index, data.queries, method, params, params100), limit))
        peer_info = {}
        if peers:
            dump = peer_mod.dump_embeddings(data.docs, data.queries, cache or tmp)
            for name in peers:  # one at a time: building a peer's index is CPU heavy
                peer_index = (cache or tmp) / "bench" / f"peer-index-{name}-{dump.name.removeprefix('peers-')}"
                peer = peer_mod.Peer(name, peers_dir, dump, peer_index, threads)
                started.append(peer)
                peer_info[name] = peer.info
                engines.append(_Engine(name, _peer(peer, data.doc_ids)))
        _measure(engines, len(data.query_ids), block)
        results = {}
        for e in engines:
            n = len(e.lat[10])
            hits10 = [e.hits[10][q] for q in range(n)]
            hits100 = [e.hits[100][q] for q in range(n)]
            recall10, recall100 = _recall(hits10, truth[:n], 10), _recall(hits100, truth[:n], 100)
            sub = BenchData(data.name, data.doc_ids, data.docs, data.query_ids[:n], data.queries[:n], data.qrels)
            if e.name == "exact" and keep_vectors:
                # exact on the stored originals IS the ground truth (recall 1.0 on the timed queries):
                # its nDCG/MAP are computed from the ground truth for every query
                hits10 = [[Hit(d, -r) for r, d in enumerate(row[:10])] for row in truth]
                hits100 = [[Hit(d, -r) for r, d in enumerate(row)] for row in truth]
                sub = data
            entry = {
                "recall@10": round(recall10, 4),
                "recall@100": round(recall100, 4),
                **{k: round(v, 4) for k, v in _ir_metrics(hits10, sub).items() if k == "ndcg@10"},
                **{k: round(v, 4) for k, v in _ir_metrics(hits100, sub).items() if k != "ndcg@10"},
                "p50_ms": round(statistics.median(e.lat[10]), 3),
                "p95_ms": round(_pct(e.lat[10], 0.95), 3),
                "qps": round(1000 * n / sum(e.lat[10]), 2),
                "p50_ms_k100": round(statistics.median(e.lat[100]), 3),
                "measured_queries": n,
            }
            if e.name in peer_info:
                info = peer_info[e.name]
                entry.update(
                    {
                        "bytes_per_vector": info.get("bytes_per_vector"),
                        "build_s": info.get("build_s"),
                        "index_bytes_per_vector_disk": info.get("index_bytes_per_vector_disk"),
                        "peer": {k: v for k, v in info.items() if k not in ("ready", "bytes_per_vector")},
                        "threads": threads,
                    }
                )
            else:
                uses_full = keep_vectors and e.name in ("exact", "plaid", "plaid-wide", "xtr", "prf", "prf-retrieve")
                per_q = {key: v / max(1, n) for key, v in e.work.items()}
                entry.update(
                    {
                        "bytes_per_vector": compressed + (2 * data.docs.dim if uses_full else 0),
                        "dot_products": round(per_q.get("dot_products", 0)),
                        "candidates": round(per_q.get("candidates", per_q.get("scored_docs", 0))),
                        **{k: round(v) for k, v in per_q.items() if k.endswith("dot_products") and k != "dot_products"},
                        **meta,
                    }
                )
            results[e.name] = entry
            log.info("%s: %s", e.name, entry)
        if results.get("xtr", {}).get("dot_products") and results.get("plaid", {}).get("dot_products"):
            # the issue's comparison: XTR's token scoring vs PLAID's decompress-and-score stage
            ratio = results["plaid"]["dot_products"] / results["xtr"]["dot_products"]
            results["xtr"]["plaid_to_xtr_dot_products"] = round(ratio, 2)
        index.close()
        return results
    finally:
        for peer in started:
            peer.close()
        shutil.rmtree(tmp, ignore_errors=True)


def format_table(results: dict) -> str:
    cols = [
        "recall@10",
        "recall@100",
        "ndcg@10",
        "map@100",
        "p50_ms",
        "p95_ms",
        "qps",
        "bytes_per_vector",
        "dot_products",
    ]
    lines = ["method".ljust(18) + "".join(c.rjust(14) for c in cols)]
    for name, e in results.items():
        lines.append(name.ljust(18) + "".join(str(e.get(c, "")).rjust(14) for c in cols))
    return "\n".join(lines)
