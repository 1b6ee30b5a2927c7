"""``tessera bench service``: latency through the gRPC service, one client, one query at a time.

A BEIR corpus is indexed once into a data directory (cached: keyed by the model's weights, the corpus
and the document backend), then ``tessera serve`` runs on it as a child process with the query backend
under test. One client searches the split's queries one after the other; the report gives

- end to end: p50/p95 of the client's wall time per ``Search`` call (query encoding, search, gRPC);
- server side: p50/p95 of the ``took_ms`` the server reports (encoding + search, no transport);
- query encoding inside the server: mean, and p50/p95 estimated from the Prometheus histogram
  ``tessera_encode_duration_seconds{kind="query"}`` (bucket bounds, so coarse);
- query encoding alone: the same backend timed in this process, one query at a time (exact p50/p95).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

from tessera.errors import DataError
from tessera.service.process import ServerProcess

log = logging.getLogger(__name__)

COLLECTION = "bench"


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def _summary(values: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(values), 2), "p95_ms": round(_pct(values, 0.95), 2),
            "mean_ms": round(statistics.fmean(values), 2), "n": len(values)}


def indexed_data_dir(data: Path, model: str, doc_backend: str, root: Path, encoder=None) -> Path:
    """A data directory holding collection ``bench``: ``data``'s corpus indexed with ``model`` (done once)."""
    from tessera.client import Client
    from tessera.datasets import load_corpus
    from tessera.eval.cache import corpus_fingerprint, model_fingerprint
    from tessera.training.checkpoints import load_encoder

    corpus = load_corpus(data / "corpus.jsonl")
    ids = list(corpus)
    texts = [corpus[i].full_text for i in ids]
    enc = encoder or load_encoder(model)
    h = hashlib.sha256()
    for part in (model_fingerprint(enc.model, enc.tokenizer, enc.config.to_dict()), corpus_fingerprint(ids, texts),
                 doc_backend):
        h.update(part.encode())
    folder = root / h.hexdigest()[:24]
    done = folder / "indexed.json"
    if done.is_file():
        log.info("reusing the indexed data directory %s", folder)
        return folder
    log.info("indexing %d documents into %s (once)", len(ids), folder)
    t0 = time.perf_counter()
    with Client.local(folder, doc_backend=doc_backend) as client:
        client.create_collection(COLLECTION, model, if_not_exists=True)
        docs = [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
        client.bulk_upsert(COLLECTION, docs, batch_size=256, progress=True)
    info = {"model": model, "data": str(data), "docs": len(ids), "doc_backend": doc_backend,
            "seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(info) + "\n")
    return folder


def _histogram(text: str, name: str, label: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative (le, count) buckets, sum, count) of one labelled Prometheus histogram."""
    buckets, total, count = [], 0.0, 0.0
    for line in text.splitlines():
        if not line.startswith(name) or label not in line:
            continue
        key, value = line.rsplit(" ", 1)
        if key.startswith(name + "_bucket"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(value)))
        elif key.startswith(name + "_sum"):
            total = float(value)
        elif key.startswith(name + "_count"):
            count = float(value)
    return sorted(buckets), total, count


def _histogram_delta(before: str, after: str, name: str, label: str) -> dict:
    """Mean and bucket-bound p50/p95 (ms) of what a histogram observed between two scrapes."""
    b0, s0, c0 = _histogram(before, name, label)
    b1, s1, c1 = _histogram(after, name, label)
    n = c1 - c0
    if n <= 0:
        return {}
    prev = dict(b0)
    cum = [(le, c - prev.get(le, 0.0)) for le, c in b1]

    def bound(q: float) -> float:
        for le, c in cum:
            if c >= q * n:
                return le * 1000
        return float("inf")

    return {"mean_ms": round((s1 - s0) / n * 1000, 2), "p50_ms_at_most": bound(0.5),
            "p95_ms_at_most": bound(0.95), "n": int(n)}


def _encode_alone(encoder, texts: list[str]) -> list[float]:
    for t in texts[:5]:
        encoder.encode_queries([t])
    lat = []
    for t in texts:
        t0 = time.perf_counter()
        encoder.encode_queries([t])
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def run_service_benchmark(
    data: Path,
    model: str = "default",
    *,
    query_backend: str = "auto",
    doc_backend: str = "auto",
    threads: int | None = None,
    n_queries: int = 300,
    k: int = 10,
    method: str = "plaid",
    split: str = "test",
    work_dir: Path | None = None,
    server_args: list[str] | None = None,
) -> dict:
    from tessera.client import Client
    from tessera.datasets import load_beir
    from tessera.training.checkpoints import load_encoder
    from tessera.training.runtime import use_backend

    if not (data / "corpus.jsonl").is_file():
        raise DataError(f"{data}: no corpus.jsonl (give a BEIR folder)")
    if n_queries <= 0 or k <= 0:
        raise DataError("--queries and --k must be positive")
    root = work_dir or Path(os.environ.get("TESSERA_CACHE_DIR", Path.home() / ".cache" / "tessera")) / "bench-service"
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    ds = load_beir(data, split)
    qids = [q for q in ds.queries if q in ds.qrels] or list(ds.queries)
    qids = qids[:n_queries]
    texts = [ds.queries[q] for q in qids]
    encoder = load_encoder(model)
    folder = indexed_data_dir(data, model, doc_backend, root, encoder)

    serve_args = ["--query-backend", query_backend, "--doc-backend", doc_backend, "--log-format", "text"]
    if threads:
        serve_args += ["--encoder-threads", str(threads)]
    serve_args += list(server_args or [])
    server = ServerProcess(folder, root / "server.log", extra_args=serve_args, metrics=True)
    try:
        server.start(300.0)
        with Client(server.target, timeout=30.0) as client:
            for t in texts[:10]:  # warm up: first calls, caches
                client.search(COLLECTION, t, k=k, method=method)
            before = server.metrics()
            e2e, took, run = [], [], {}
            for qid, t in zip(qids, texts, strict=True):
                t0 = time.perf_counter()
                res = client.search(COLLECTION, t, k=k, method=method)
                e2e.append((time.perf_counter() - t0) * 1000)
                took.append(res.took_ms)
                run[qid] = {h.id: h.score for h in res.hits}
            after = server.metrics()
            segments = [g.documents for g in client.describe_collection(COLLECTION).segments]
    finally:
        server.stop()
    # the query encoder alone, same backend and threads, in this process (the server has stopped)
    use_backend(encoder, query_backend, threads, documents=False)
    alone = _encode_alone(encoder, texts)
    return {
        "meta": {
            "model": model, "data": str(data), "queries": len(texts), "k": k, "method": method,
            "query_backend": encoder.backend_name("queries"), "doc_backend": doc_backend, "threads": threads,
            "server_args": list(server_args or []),
            "docs": len(ds.corpus), "data_dir": str(folder),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "end_to_end": _summary(e2e),
        "server_took": _summary(took),
        "server_query_encoding": _histogram_delta(before, after, "tessera_encode_duration_seconds",
                                                  'kind="query"'),
        "server_search": _histogram_delta(before, after, "tessera_search_duration_seconds", f'method="{method}"'),
        "query_encoding_alone": _summary(alone),
        "quality": {"ndcg@10": _ndcg10(run, ds.qrels), "segment_docs": segments},
    }


def _ndcg10(run: dict, qrels: dict) -> float | None:
    """nDCG@10 of the served results over the queries that have judgements (None without any)."""
    from tessera.index.bench import ir_metrics

    ndcg = ir_metrics(run, qrels)["ndcg@10"]
    return None if math.isnan(ndcg) else round(ndcg, 4)


def format_report(r: dict) -> str:
    m = r["meta"]
    lines = [
        f"{m['data']}: {m['docs']} documents, {m['queries']} queries one at a time, {m['method']} k={m['k']}, "
        f"model {m['model']}, query backend {m['query_backend']}",
    ]
    for key, label in (("end_to_end", "end to end (client)"), ("server_took", "server took_ms"),
                       ("query_encoding_alone", "query encoding alone")):
        s = r[key]
        lines.append(
            f"  {label:<28} p50 {s['p50_ms']:7.2f} ms   p95 {s['p95_ms']:7.2f} ms   mean {s['mean_ms']:7.2f} ms"
        )
    q = r.get("quality") or {}
    if q:
        lines.append(f"  nDCG@10 {q['ndcg@10']}; the collection's segments hold {q['segment_docs']} documents")
    for key, label in (("server_query_encoding", "query encoding in server"), ("server_search", "search in server")):
        s = r[key]
        if s:
            lines.append(f"  {label:<28} mean {s['mean_ms']:7.2f} ms   p50 <= {s['p50_ms_at_most']:g} ms   "
                         f"p95 <= {s['p95_ms_at_most']:g} ms (histogram buckets)")
    return "\n".join(lines)
