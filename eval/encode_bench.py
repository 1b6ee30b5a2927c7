"""``tessera bench encode``: encoding speed of the encoder's inference backends, A/B in one process.

Each variant (a backend, ``torch``/``torch-int8``/``onnx``/``onnx-int8``, at a number of intra-op
threads) encodes the same inputs, interleaved round by round (the order rotates every round), so that
a busy machine slows every variant alike:

- single-query latency: each query encoded alone (tokenisation included; queries are padded to the
  model's query length, 32 tokens for ColBERT models), p50 and p95 over every round;
- document throughput: a fixed, evenly spaced subset of the corpus encoded in length-bucketed batches,
  docs/s, median over rounds; the time for the whole corpus is extrapolated from it (and marked so);
- agreement with torch fp32: token-vector cosines on the queries and the first 200 documents of the
  subset, and the overlap of the top 10 of those documents by exact MaxSim, a cheap proxy; the real
  check is nDCG@10 with ``tessera eval --backend``.

With ``--pylate PYTHON`` (PyLate's own interpreter, see benchmarks/peers/setup_pylate.sh), PyLate
encodes the same documents and queries with the same backbone in the same rounds.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tessera.errors import DataError, TesseraError

log = logging.getLogger(__name__)

REFERENCE = "torch"
PYLATE = "pylate"
AGREEMENT_DOCS = 200  # documents (of the subset) whose vectors are compared with torch fp32's


@dataclass
class Variant:
    name: str  # e.g. "onnx-int8"
    threads: int
    encoder: object = None
    latencies: list[float] = field(default_factory=list)
    docs_per_s: list[float] = field(default_factory=list)
    agreement: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.threads}t"


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def evenly_spaced(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _maxsim_top(q: torch.Tensor, docs, k: int = 10) -> torch.Tensor:
    from tessera.scoring import maxsim_topk

    return maxsim_topk(q, docs, min(k, len(docs)))[1]


def _agreement(ref_q, ref_d, q, d) -> dict:
    """Token cosines and top-10 MaxSim overlap of one variant's encodings against torch fp32's."""
    qcos = (ref_q * q).sum(-1)
    dcos = (ref_d.vectors.float() * d.vectors.float()).sum(-1)
    top_ref, top = _maxsim_top(ref_q, ref_d), _maxsim_top(q, d)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(top_ref.tolist(), top.tolist(), strict=True))
    return {
        "query_cos_mean": round(float(qcos.mean()), 5),
        "query_cos_min": round(float(qcos.min()), 5),
        "doc_cos_mean": round(float(dcos.mean()), 5),
        "doc_cos_min": round(float(dcos.min()), 5),
        "top10_overlap": round(overlap / top_ref.numel(), 4),
    }


class PyLatePeer:
    """PyLate in its own interpreter, driven line by line (see ``tessera.eval.pylate_worker``)."""

    def __init__(self, python: str, backbone: str, docs: list[str], queries: list[str], config) -> None:
        if not Path(python).is_file():
            raise DataError(f"--pylate {python}: no such interpreter (run benchmarks/peers/setup_pylate.sh)")
        self._tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump({"docs": docs, "queries": queries}, self._tmp)
        self._tmp.close()
        worker = Path(__file__).with_name("pylate_worker.py")
        cmd = [
            python, str(worker), "--backbone", backbone, "--texts", self._tmp.name,
            "--doc-maxlen", str(config.doc_maxlen), "--query-maxlen", str(config.query_maxlen),
            "--dim", str(config.dim),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.info = self._read()
        if not self.info.get("ready"):
            raise TesseraError(f"PyLate worker did not start: {self.info}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise TesseraError(f"PyLate worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
                self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - best effort
            self.proc.kill()
        Path(self._tmp.name).unlink(missing_ok=True)


def make_variants(encoder, options: list[str], threads: list[int], cache_dir=None) -> list[Variant]:
    """One encoder per (backend, threads), sharing the torch model and its weights."""
    from tessera.training.runtime import Runtime

    out = []
    for name in options:
        for t in threads:
            rt = Runtime.parse(name, t)
            enc = copy.copy(encoder)
            t0 = time.perf_counter()
            enc.set_runtime(rt, cache_dir=cache_dir)
            log.info("%s@%dt ready in %.1f s", rt.name, t, time.perf_counter() - t0)
            out.append(Variant(rt.name, t, enc))
    return out


def run_encode_benchmark(
    data: Path,
    model: str = "default",
    *,
    options: list[str] | None = None,
    threads: list[int] | None = None,
    n_queries: int = 100,
    n_docs: int = 500,
    rounds: int = 3,
    batch_size: int = 32,
    split: str = "test",
    pylate: str | None = None,
    queries: bool = True,
    documents: bool = True,
    cache_dir=None,
) -> dict:
    """Measure every (option, threads) variant, interleaved; returns a JSON-ready report."""
    from tessera.datasets import load_beir
    from tessera.training.checkpoints import load_encoder, resolve_backbone

    options = options or ["torch", "torch-int8", "onnx", "onnx-int8"]
    threads = threads or [1, 2]
    if rounds <= 0 or n_queries <= 0 or n_docs <= 0 or batch_size <= 0:
        raise DataError("--rounds, --queries, --docs and --batch-size must be positive")
    if REFERENCE not in options:
        options = [REFERENCE, *options]
    ds = load_beir(data, split)
    qids = [q for q in ds.queries if q in ds.qrels] or list(ds.queries)
    query_texts = [ds.queries[q] for q in evenly_spaced(qids, n_queries)]
    doc_ids = evenly_spaced(ds.doc_ids, n_docs)
    doc_texts = [ds.corpus[d].full_text for d in doc_ids]
    encoder = load_encoder(model)
    encoder.model.eval()
    variants = make_variants(encoder, options, threads, cache_dir)
    peer = None
    if pylate:
        backbone = resolve_backbone(encoder.config.backbone)
        peer = PyLatePeer(pylate, backbone, doc_texts, query_texts, encoder.config)
        variants += [Variant(PYLATE, t) for t in threads]
    torch_threads = torch.get_num_threads()
    try:
        # agreement with torch fp32 (and a warm-up of every variant)
        ref_q = ref_d = None
        agreement: dict[str, dict] = {}  # per backend: threads do not change the vectors
        for v in variants:
            if v.encoder is None:
                continue
            if v.name not in agreement:
                q = v.encoder.encode_queries(query_texts)
                d = v.encoder.encode_documents(doc_texts[:AGREEMENT_DOCS], batch_size=batch_size, progress=False)
                if ref_q is None:
                    ref_q, ref_d = q, d
                agreement[v.name] = _agreement(ref_q, ref_d, q, d)
            v.agreement = agreement[v.name]
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                if queries:
                    _time_queries(v, query_texts, peer)
                if documents:
                    _time_documents(v, doc_texts, batch_size, peer)
            log.info("round %d/%d done", r + 1, rounds)
    finally:
        torch.set_num_threads(torch_threads)
        if peer is not None:
            peer.close()
    return _report(variants, ds, model, encoder, len(query_texts), len(doc_texts), rounds, batch_size, peer)


def _time_queries(v: Variant, texts: list[str], peer: PyLatePeer | None) -> None:
    if v.encoder is None:
        assert peer is not None
        v.latencies += peer.ask(op="queries", threads=v.threads)["latencies_ms"]
        return
    for t in texts[:3]:  # warm up: caches, and other variants' spinning threads settle
        v.encoder.encode_queries([t])
    for t in texts:
        t0 = time.perf_counter()
        v.encoder.encode_queries([t])
        v.latencies.append((time.perf_counter() - t0) * 1000)


def _time_documents(v: Variant, texts: list[str], batch_size: int, peer: PyLatePeer | None) -> None:
    if v.encoder is None:
        assert peer is not None
        reply = peer.ask(op="docs", threads=v.threads, batch_size=batch_size)
        v.docs_per_s.append(reply["docs"] / reply["seconds"])
        return
    v.encoder.encode_documents(texts[:batch_size], batch_size=batch_size, progress=False)  # warm up
    t0 = time.perf_counter()
    v.encoder.encode_documents(texts, batch_size=batch_size, progress=False)
    v.docs_per_s.append(len(texts) / (time.perf_counter() - t0))


def _report(variants, ds, model, encoder, nq, nd, rounds, batch_size, peer) -> dict:
    ref = {v.threads: v for v in variants if v.name == REFERENCE}
    corpus = len(ds.doc_ids)
    rows = {}
    for v in variants:
        base = ref.get(v.threads)
        row: dict = {"backend": v.name, "threads": v.threads}
        if v.latencies:
            p50 = statistics.median(v.latencies)
            row.update(query_p50_ms=round(p50, 2), query_p95_ms=round(_pct(v.latencies, 0.95), 2))
            if base is not None and base.latencies:
                row["query_speedup_vs_torch"] = round(statistics.median(base.latencies) / p50, 2)
        if v.docs_per_s:
            dps = statistics.median(v.docs_per_s)
            row.update(docs_per_s=round(dps, 1), docs_per_s_rounds=[round(x, 1) for x in v.docs_per_s])
            row["corpus_seconds_extrapolated"] = round(corpus / dps, 1)
            if base is not None and base.docs_per_s:
                row["docs_speedup_vs_torch"] = round(dps / statistics.median(base.docs_per_s), 2)
        row.update(v.agreement)
        rows[v.label] = row
    meta = {
        "model": model,
        "backbone": encoder.config.backbone,
        "query_maxlen": encoder.config.query_maxlen,
        "doc_maxlen": encoder.config.doc_maxlen,
        "queries": nq,
        "docs": nd,
        "corpus_docs": corpus,
        "rounds": rounds,
        "batch_size": batch_size,
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs",
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if peer is not None:
        meta["pylate"] = peer.info.get("pylate")
        meta["pylate_torch"] = peer.info.get("torch")
    return {"meta": meta, "variants": rows}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def format_table(report: dict) -> str:
    m = report["meta"]
    cols = [
        ("query_p50_ms", "q p50 ms"),
        ("query_p95_ms", "q p95 ms"),
        ("query_speedup_vs_torch", "q x"),
        ("docs_per_s", "docs/s"),
        ("docs_speedup_vs_torch", "docs x"),
        ("corpus_seconds_extrapolated", "corpus s*"),
        ("query_cos_min", "q cos min"),
        ("doc_cos_mean", "d cos mean"),
        ("top10_overlap", "top10"),
    ]
    lines = [
        f"model {m['model']}: {m['queries']} queries (alone, {m['query_maxlen']} tokens), {m['docs']} of "
        f"{m['corpus_docs']} documents (batches of {m['batch_size']}), {m['rounds']} rounds, {m['machine']}",
        "variant".ljust(16) + "".join(label.rjust(11) for _, label in cols),
    ]
    for name, row in report["variants"].items():
        lines.append(name.ljust(16) + "".join(str(row.get(key, "")).rjust(11) for key, _ in cols))
    lines.append(
        "x: ratio to torch fp32 at the same threads (latency: torch/variant; docs/s: variant/torch). "
        "corpus s*: EXTRAPOLATED from the subset's docs/s. cos/top10: agreement with torch fp32."
    )
    return "\n".join(lines)
