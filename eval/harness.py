"""``evaluate``: retrieve for every judged query of a BEIR split and score the run.

Models: ``bm25`` (bm25s), ``minilm`` (single-vector all-MiniLM-L6-v2, cosine), and multi-vector
models (``default``, a checkpoint folder, a hub id: anything ``load_encoder`` accepts) searched
with a method from ``tessera.eval.methods``. Document encodings are cached on disk.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tessera.datasets import BeirDataset, load_beir
from tessera.errors import DataError, TesseraError
from tessera.eval import methods
from tessera.eval.cache import EncodingCache, corpus_fingerprint, default_cache_dir, model_fingerprint
from tessera.eval.metrics import evaluate_run

log = logging.getLogger(__name__)

BASELINES = ("bm25", "minilm")
MIN_K = 100  # recall@100 needs at least 100 retrieved documents


class EvalError(TesseraError):
    """An evaluation request that cannot be carried out as given."""


def evaluate(
    data_dir: str | Path,
    model: str,
    split: str = "test",
    method: str = "exact",
    *,
    k: int = 1000,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    params: dict | None = None,
    nbits: int = 2,
    progress: bool | None = None,
) -> dict:
    """Evaluate ``model`` on split ``split`` of the BEIR folder ``data_dir``.

    Retrieves the top ``k`` documents per judged query (AP, reported as ``map``, is computed over
    them) and returns the metrics with counts and timings: ``encode_seconds`` covers documents and
    queries (BM25: tokenising and indexing), ``search_seconds`` the retrieval itself.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_K:
        raise EvalError(f"k must be an integer of at least {MIN_K} (recall@100 is reported), got {k!r}")
    if batch_size <= 0:
        raise EvalError(f"batch size must be positive, got {batch_size}")
    params = dict(params or {})
    if model in BASELINES:
        if method != "exact" or params:
            raise EvalError(
                f"model {model!r} is searched exhaustively: use --method exact without parameters "
                f"(search methods {', '.join(methods.available_methods())} apply to multi-vector models)"
            )
        search_fn = None
    else:
        search_fn = methods.get_method(method, params)  # fail on a bad method before loading anything

    dataset = load_beir(data_dir, split)
    if not dataset.queries:
        raise DataError(f"{data_dir}: split {split!r} has no judged queries")
    cache = EncodingCache((cache_dir or default_cache_dir()) if use_cache else None)

    if model == "bm25":
        hits, info = _run_bm25(dataset, k, progress)
    elif model == "minilm":
        hits, info = _run_minilm(dataset, k, batch_size, cache, device, progress)
    else:
        opts = methods.SearchOptions(k=k, device=device, params=params, nbits=nbits)
        hits, info = _run_multivector(dataset, model, search_fn, opts, batch_size, cache, progress)

    qids = list(dataset.queries)
    run = {qid: dict(row) for qid, row in zip(qids, hits, strict=True)}
    metrics = evaluate_run(dataset.qrels, run)
    return {
        **metrics,
        "queries": len(qids),
        "docs": len(dataset.corpus),
        **info,
        "model": model,
        "method": method,
        "split": split,
        "k": k,
        "data": str(data_dir),
    }


def _texts(dataset: BeirDataset) -> tuple[list[str], list[str], list[str]]:
    ids = dataset.doc_ids
    return ids, [dataset.corpus[i].full_text for i in ids], list(dataset.queries.values())


def _run_bm25(dataset: BeirDataset, k: int, progress: bool | None) -> tuple[list, dict]:
    from tessera.eval.bm25 import BM25

    ids, texts, queries = _texts(dataset)
    t0 = time.perf_counter()
    bm25 = BM25(texts, progress=bool(progress))
    query_tokens = bm25.tokenize_queries(queries)
    t1 = time.perf_counter()
    rows = bm25.search(query_tokens, k)
    t2 = time.perf_counter()
    hits = [[(ids[i], s) for i, s in row] for row in rows]
    return hits, {"encode_seconds": t1 - t0, "search_seconds": t2 - t1, "bm25": bm25.settings}


def _run_minilm(
    dataset: BeirDataset, k: int, batch_size: int, cache: EncodingCache, device: str, progress: bool | None
) -> tuple[list, dict]:
    from tessera.eval.dense import MeanPoolingEncoder, minilm_path

    ids, texts, queries = _texts(dataset)
    encoder = MeanPoolingEncoder(minilm_path(), device=device)
    key = cache.key(
        model_fingerprint(encoder.model, encoder.tokenizer, encoder.settings),
        corpus_fingerprint(ids, texts),
        encoder.settings,
    )
    t0 = time.perf_counter()
    doc_emb = cache.load_dense(key, len(ids))
    status = "hit" if doc_emb is not None else ("miss" if cache.enabled else "off")
    if doc_emb is None:
        doc_emb = encoder.encode(texts, batch_size=batch_size, progress=progress, desc="encoding documents")
        cache.save_dense(key, doc_emb, {"model": "minilm", "data": str(dataset.path), "docs": len(ids)})
    t1 = time.perf_counter()
    q_emb = encoder.encode(queries, batch_size=batch_size, progress=False)
    t2 = time.perf_counter()
    scores = q_emb @ doc_emb.float().T
    top = scores.topk(min(k, len(ids)), dim=1)
    hits = [
        [(ids[i], s) for i, s in zip(row_i.tolist(), row_s.tolist(), strict=True)]
        for row_i, row_s in zip(top.indices, top.values, strict=True)
    ]
    t3 = time.perf_counter()
    return hits, _timings(t0, t1, t2, t3, status, key)


def _run_multivector(
    dataset: BeirDataset,
    spec: str,
    search_fn: methods.SearchFn,
    opts: methods.SearchOptions,
    batch_size: int,
    cache: EncodingCache,
    progress: bool | None,
) -> tuple[list, dict]:
    from tessera.training.checkpoints import load_encoder

    ids, texts, queries = _texts(dataset)
    encoder = load_encoder(spec, opts.device)
    settings = {"kind": "multi-vector", **encoder.config.to_dict()}
    key = cache.key(
        model_fingerprint(encoder.model, encoder.tokenizer, settings),
        corpus_fingerprint(ids, texts),
        settings,
    )
    t0 = time.perf_counter()
    docs = cache.load_packed(key, len(ids))
    status = "hit" if docs is not None else ("miss" if cache.enabled else "off")
    if docs is None:
        docs = encoder.encode_documents(
            texts, batch_size=batch_size, progress=progress, desc="encoding documents"
        )
        cache.save_packed(key, docs, {"model": spec, "data": str(dataset.path), "docs": len(ids)})
    t1 = time.perf_counter()
    q = encoder.encode_queries(queries, batch_size=batch_size)
    t2 = time.perf_counter()
    hits = search_fn(q, docs, ids, opts)
    t3 = time.perf_counter()
    info = _timings(t0, t1, t2, t3, status, key)
    info["doc_vectors"] = int(docs.vectors.shape[0])
    return hits, info


def _timings(t0: float, t1: float, t2: float, t3: float, cache_status: str, key: str) -> dict:
    return {
        "encode_seconds": t2 - t0,
        "encode_docs_seconds": t1 - t0,
        "encode_queries_seconds": t2 - t1,
        "search_seconds": t3 - t2,
        "doc_cache": cache_status,
        "cache_key": key[:16],
    }
