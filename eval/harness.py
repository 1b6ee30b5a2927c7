"""``evaluate``: retrieve for every judged query of a BEIR split and score the run.

Models: ``bm25`` (bm25s), ``minilm`` (single-vector all-MiniLM-L6-v2, cosine), DupMAE / dense
checkpoints (one vector per text, FAISS inner-product search), and multi-vector models (``default``,
a checkpoint folder, a hub id: anything ``load_encoder`` accepts) searched with a method from
``tessera.eval.methods``, or reranking a single-vector first stage (``dupmae+rerank``). Document
encodings are cached on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tessera.datasets import BeirDataset, load_beir
from tessera.errors import DataError, TesseraError
from tessera.eval import methods
from tessera.eval.cache import EncodingCache, corpus_fingerprint, default_cache_dir, model_fingerprint
from tessera.eval.metrics import evaluate_run
from tessera.packed import PackedDocuments

log = logging.getLogger(__name__)

BASELINES = ("bm25", "minilm")
MIN_K = 100  # recall@100 needs at least 100 retrieved documents
TWO_STAGE = "dupmae+rerank"  # single-vector first stage (FAISS), exact MaxSim rerank through the index
DEFAULT_CANDIDATES = 200


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
    nbits: int | None = None,
    progress: bool | None = None,
    first_stage: str | None = None,
    posthoc: str | None = None,
    posthoc_iters: int = 10,
    backend: str = "torch",
    threads: int | None = None,
) -> dict:
    """Evaluate ``model`` on split ``split`` of the BEIR folder ``data_dir``.

    Retrieves the top ``k`` documents per judged query (AP, reported as ``map``, is computed over
    them) and returns the metrics with counts and timings: ``encode_seconds`` covers documents and
    queries (BM25: tokenising and indexing), ``search_seconds`` the retrieval itself (with building an
    in-memory index where the method needs one; ``retrieval_seconds`` leaves that out).

    ``method="dupmae+rerank"`` is a two-stage search: the single-vector model ``first_stage`` (a DupMAE
    or dense checkpoint, or ``minilm``) retrieves ``params["candidates"]`` documents per query through a
    FAISS inner-product index, and the multi-vector ``model`` reranks them with exact MaxSim through the
    index's ``rerank``. ``posthoc`` (a CRISP variant such as ``C4x8`` or ``R0.25``) replaces an unclustered
    model's document (and, if the variant says so, query) vectors by ``posthoc_iters`` Lloyd iterations
    of k-means representatives, as many as that CRISP variant keeps: the post-hoc clustering baseline.

    ``backend`` (torch, torch-int8, onnx, onnx-int8, auto; see ``tessera.training.runtime``) runs the
    model's inference, queries and documents, with ``threads`` intra-op threads; document encodings of a
    backend other than torch fp32 are cached under their own key.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_K:
        raise EvalError(f"k must be an integer of at least {MIN_K} (recall@100 is reported), got {k!r}")
    if batch_size <= 0:
        raise EvalError(f"batch size must be positive, got {batch_size}")
    params = dict(params or {})
    if first_stage is not None and method != TWO_STAGE:
        raise EvalError(f"a first-stage model is used by --method {TWO_STAGE} only")
    spec = None
    if posthoc is not None:
        from tessera.training.crisp import ClusterSpec

        if isinstance(posthoc_iters, bool) or not isinstance(posthoc_iters, int) or posthoc_iters < 0:
            raise EvalError(f"post-hoc k-means iterations must be a non-negative integer, got {posthoc_iters!r}")
        spec = ClusterSpec.parse(posthoc, posthoc_iters)
    if model in BASELINES and backend != "torch":
        raise EvalError(f"model {model!r} runs on torch only (--backend applies to the models Tessera loads)")
    if model in BASELINES:
        if method != "exact" or params or spec is not None:
            raise EvalError(
                f"model {model!r} is searched exhaustively: use --method exact without parameters or "
                f"post-hoc clustering (search methods {', '.join(methods.available_methods())} and "
                f"{TWO_STAGE} apply to multi-vector models)"
            )
        search_fn = None
    elif method == TWO_STAGE:
        if first_stage is None:
            raise EvalError(f"--method {TWO_STAGE} needs --first-stage MODEL (a DupMAE or dense checkpoint, "
                            "or minilm)")
        if spec is not None:
            raise EvalError(f"post-hoc clustering is not available with --method {TWO_STAGE}")
        params = {"candidates": _candidates(params)}
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
        hits, info = _run_single_vector(dataset, _minilm(device, batch_size), k, cache, progress)
    else:
        from tessera.index.codec import default_nbits
        from tessera.training.checkpoints import load_encoder
        from tessera.training.dupmae import DenseEncoder
        from tessera.training.runtime import use_backend

        encoder = load_encoder(model, device)
        use_backend(encoder, backend, threads)
        if nbits is None:  # by model: cluster representatives (CRISP, or post-hoc clustering) take 4 bits
            nbits = default_nbits(encoder.config.clustered or spec is not None)
        opts = methods.SearchOptions(k=k, device=device, params=params, nbits=nbits)
        if isinstance(encoder, DenseEncoder):
            if method != "exact" or params or spec is not None:
                raise EvalError(
                    f"model {model!r} is a dense model (one vector per document, searched exactly through a "
                    f"FAISS inner-product index): use --method exact, or give it as --first-stage of "
                    f"--method {TWO_STAGE}"
                )
            hits, info = _run_single_vector(dataset, _dense(encoder, model, batch_size), k, cache, progress)
        elif method == TWO_STAGE:
            assert first_stage is not None
            first = _single_vector_model(first_stage, device, batch_size)
            hits, info = _run_two_stage(dataset, model, encoder, first, opts, batch_size, cache, progress)
            info["first_stage"] = first_stage
        else:
            if spec is not None and encoder.config.clustered:
                raise EvalError(f"model {model!r} is already a CRISP (clustered) model; post-hoc clustering "
                                "is a baseline for unclustered models")
            hits, info = _run_multivector(dataset, model, encoder, search_fn, opts, batch_size, cache, progress,
                                          spec)
            if spec is not None:
                info["posthoc"] = posthoc
                info["posthoc_iters"] = posthoc_iters

    if model not in BASELINES and hasattr(encoder, "backend_name"):
        info["backend"] = {"queries": encoder.backend_name("queries"), "documents": encoder.backend_name("documents")}
    qids = list(dataset.queries)
    if "retrieval_seconds" in info:
        info["ms_per_query"] = 1000 * info["retrieval_seconds"] / len(qids)
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
        **({"params": params} if params else {}),
    }


def _candidates(params: dict) -> int:
    unknown = set(params) - {"candidates"}
    if unknown:
        raise EvalError(f"method {TWO_STAGE!r} takes only 'candidates', got {', '.join(sorted(unknown))}")
    value = params.get("candidates", DEFAULT_CANDIDATES)
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_K:
        raise EvalError(f"method {TWO_STAGE!r}: candidates must be an integer of at least {MIN_K}, got {value!r}")
    return value


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


@dataclass
class _SingleVector:
    """A one-vector-per-text model as the harness uses it (MiniLM, DupMAE / dense checkpoints)."""

    name: str
    model: object  # nn.Module, for the cache fingerprint
    tokenizer: object
    settings: dict
    encode_documents: Callable[[list[str], bool | None], torch.Tensor]
    encode_queries: Callable[[list[str]], torch.Tensor]


def _minilm(device: str, batch_size: int) -> _SingleVector:
    from tessera.eval.dense import MeanPoolingEncoder, minilm_path

    enc = MeanPoolingEncoder(minilm_path(), device=device)
    return _SingleVector(
        "minilm", enc.model, enc.tokenizer, enc.settings,
        lambda texts, progress: enc.encode(texts, batch_size=batch_size, progress=progress, desc="encoding documents"),
        lambda texts: enc.encode(texts, batch_size=batch_size, progress=False),
    )


def _dense(encoder, name: str, batch_size: int) -> _SingleVector:
    settings = {"kind": "dense", **encoder.config.to_dict()}
    return _SingleVector(
        name, encoder.model, encoder.tokenizer, settings,
        lambda texts, progress: encoder.encode_documents(texts, batch_size=batch_size, progress=progress,
                                                         desc="encoding documents"),
        lambda texts: encoder.encode_queries(texts, batch_size=batch_size, progress=False),
    )


def _single_vector_model(spec: str, device: str, batch_size: int) -> _SingleVector:
    """``minilm`` or a DupMAE / dense checkpoint (EvalError for a multi-vector one)."""
    if spec == "minilm":
        return _minilm(device, batch_size)
    from tessera.training.checkpoints import load_encoder
    from tessera.training.dupmae import DenseEncoder

    encoder = load_encoder(spec, device)
    if not isinstance(encoder, DenseEncoder):
        raise EvalError(f"first-stage model {spec!r} is a multi-vector model; the first stage of {TWO_STAGE} "
                        "is a single-vector model (a DupMAE or dense checkpoint, or minilm)")
    return _dense(encoder, spec, batch_size)


def _single_vector_docs(dataset: BeirDataset, sv: _SingleVector, cache: EncodingCache, progress: bool | None
                        ) -> tuple[torch.Tensor, str, str]:
    """(document embeddings [N, dim], cache status, cache key)."""
    ids, texts, _ = _texts(dataset)
    key = cache.key(model_fingerprint(sv.model, sv.tokenizer, sv.settings), corpus_fingerprint(ids, texts),
                    sv.settings)
    emb = cache.load_dense(key, len(ids))
    status = "hit" if emb is not None else ("miss" if cache.enabled else "off")
    if emb is None:
        emb = sv.encode_documents(texts, progress)
        cache.save_dense(key, emb, {"model": sv.name, "data": str(dataset.path), "docs": len(ids)})
    return emb, status, key


def _run_single_vector(
    dataset: BeirDataset, sv: _SingleVector, k: int, cache: EncodingCache, progress: bool | None
) -> tuple[list, dict]:
    from tessera.eval.dense import inner_product_search

    ids, _, queries = _texts(dataset)
    t0 = time.perf_counter()
    doc_emb, status, key = _single_vector_docs(dataset, sv, cache, progress)
    t1 = time.perf_counter()
    q_emb = sv.encode_queries(queries)
    t2 = time.perf_counter()
    scores, rows = inner_product_search(q_emb, doc_emb, k)
    hits = [
        [(ids[i], s) for i, s in zip(row_i.tolist(), row_s.tolist(), strict=True) if i >= 0]
        for row_i, row_s in zip(rows, scores, strict=True)
    ]
    t3 = time.perf_counter()
    info = _timings(t0, t1, t2, t3, status, key)
    info.update(doc_vectors=len(ids), vectors_per_doc=1.0, dim=int(doc_emb.shape[1]),
                index_bytes=int(doc_emb.shape[0] * doc_emb.shape[1] * 4))  # FAISS flat index: float32
    return hits, info


def _multivector_docs(dataset: BeirDataset, spec: str, encoder, batch_size: int, cache: EncodingCache,
                      progress: bool | None) -> tuple[PackedDocuments, str, str]:
    """(packed document vectors, cache status, cache key)."""
    ids, texts, _ = _texts(dataset)
    settings = {"kind": "multi-vector", **encoder.config.to_dict()}
    if encoder.backend_name("documents") != "torch":  # torch fp32 keys stay as they were
        settings["backend"] = encoder.backend_name("documents")
    key = cache.key(model_fingerprint(encoder.model, encoder.tokenizer, settings), corpus_fingerprint(ids, texts),
                    settings)
    docs = cache.load_packed(key, len(ids))
    status = "hit" if docs is not None else ("miss" if cache.enabled else "off")
    if docs is None:
        docs = encoder.encode_documents(texts, batch_size=batch_size, progress=progress, desc="encoding documents")
        cache.save_packed(key, docs, {"model": spec, "data": str(dataset.path), "docs": len(ids)})
    return docs, status, key


def _size_info(docs: PackedDocuments, nbits: int) -> dict:
    """Vectors per document and bytes: fp16 originals, and the compressed index's codes (a centroid id
    and ``nbits`` per dimension per vector; the centroid table and inverted lists come on top)."""
    n = int(docs.vectors.shape[0])
    return {
        "doc_vectors": n,
        "vectors_per_doc": n / max(1, len(docs)),
        "dim": docs.dim,
        "fp16_bytes": n * docs.dim * 2,
        "index_code_bytes": n * (4 + docs.dim * nbits // 8),
    }


def _run_multivector(
    dataset: BeirDataset,
    spec: str,
    encoder,
    search_fn: methods.SearchFn,
    opts: methods.SearchOptions,
    batch_size: int,
    cache: EncodingCache,
    progress: bool | None,
    posthoc=None,
) -> tuple[list, dict]:
    ids, _, queries = _texts(dataset)
    t0 = time.perf_counter()
    docs, status, key = _multivector_docs(dataset, spec, encoder, batch_size, cache, progress)
    posthoc_seconds = None
    if posthoc is not None:
        from tessera.training.crisp import posthoc_documents

        tp = time.perf_counter()
        docs = posthoc_documents(docs, posthoc)
        posthoc_seconds = time.perf_counter() - tp
    t1 = time.perf_counter()
    q = encoder.encode_queries(queries, batch_size=batch_size)
    if posthoc is not None:
        from tessera.training.crisp import cluster_query_vectors

        q = cluster_query_vectors(q, posthoc)
    t2 = time.perf_counter()
    hits = search_fn(q, docs, ids, opts)
    t3 = time.perf_counter()
    info = _timings(t0, t1, t2, t3, status, key)
    info.update(_size_info(docs, opts.nbits), query_vectors=int(q.shape[1]), **opts.info)
    if posthoc_seconds is not None:
        info["posthoc_seconds"] = posthoc_seconds
    return hits, info


def _run_two_stage(
    dataset: BeirDataset,
    spec: str,
    encoder,
    first: _SingleVector,
    opts: methods.SearchOptions,
    batch_size: int,
    cache: EncodingCache,
    progress: bool | None,
) -> tuple[list, dict]:
    """First stage: the single-vector model over FAISS; second: exact MaxSim through ``index.rerank``."""
    from tessera.eval.dense import inner_product_search
    from tessera.index import MultiVectorIndex

    ids, _, queries = _texts(dataset)
    candidates = opts.params["candidates"]
    t0 = time.perf_counter()
    docs, status, key = _multivector_docs(dataset, spec, encoder, batch_size, cache, progress)
    dense_docs, dense_status, _ = _single_vector_docs(dataset, first, cache, progress)
    t1 = time.perf_counter()
    q = encoder.encode_queries(queries, batch_size=batch_size)
    q_dense = first.encode_queries(queries)
    t2 = time.perf_counter()
    index = MultiVectorIndex.create(None, docs.dim, nbits=opts.nbits, device=opts.device, keep_vectors=True,
                                    auto_retrain=False)
    index.add(list(ids), docs)
    tb = time.perf_counter()
    _, rows = inner_product_search(q_dense, dense_docs, candidates)
    lists = [[ids[j] for j in row if j >= 0] for row in rows.tolist()]
    tf = time.perf_counter()
    reranked = index.rerank(q, lists, k=min(opts.k, candidates))
    t3 = time.perf_counter()
    hits = [[(h.id, h.score) for h in row] for row in reranked]
    info = _timings(t0, t1, t2, t3, status, key)
    info.update(_size_info(docs, opts.nbits), query_vectors=int(q.shape[1]), first_stage_cache=dense_status,
                index_build_seconds=tb - t2, retrieval_seconds=t3 - tb, first_stage_seconds=tf - tb,
                rerank_seconds=t3 - tf, ms_per_query=1000 * (t3 - tb) / max(1, len(queries)),
                index_memory_bytes=int(index.stats()["memory_bytes"]) + int(index.stats()["full_vector_bytes"]),
                first_stage_bytes=int(dense_docs.shape[0] * dense_docs.shape[1] * 4))
    return hits, info


def _timings(t0: float, t1: float, t2: float, t3: float, cache_status: str, key: str) -> dict:
    return {
        "encode_seconds": t2 - t0,
        "encode_docs_seconds": t1 - t0,
        "encode_queries_seconds": t2 - t1,
        "search_seconds": t3 - t2,
        "retrieval_seconds": t3 - t2,  # search without building an in-memory index (methods override it)
        "doc_cache": cache_status,
        "cache_key": key[:16],
    }
