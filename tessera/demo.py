"""``tessera demo``: the main job on the embedded defaults.

Starts ``tessera serve`` (SQLite store and indexes under ``./.tessera-demo``), creates a collection with
the ``default`` model, indexes the bundled sample corpus (Tessera's own documentation, split into
passages) through the client SDK, answers a few questions, and stops the server with SIGTERM.
Run it again and the unchanged passages are not re-encoded.
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
    p = subparsers.add_parser(
        "demo",
        help="start the service, index the bundled sample corpus through the SDK, answer a few queries",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default", help="model name, checkpoint folder or hub id")
    p.add_argument("--data-dir", default=".tessera-demo", help="the server's data directory")
    p.add_argument("--collection", default="sample", help="collection name")
    p.add_argument("--method", default="plaid", help="search method: exact, plaid, xtr, prf, two-stage")
    p.add_argument("--k", type=int, default=3, help="passages to show per query")
    p.add_argument("--local", action="store_true", help="run the engine in-process instead of a server")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server")
    p.add_argument("query", nargs="*", help="questions to ask (default: three built-in ones)")
    p.set_defaults(func=run)


def _documents():
    from tessera.datasets import load_corpus

    corpus = load_corpus(SAMPLE_CORPUS)
    docs = [
        {"id": doc_id, "text": doc.full_text, "metadata": {"title": doc.title}} for doc_id, doc in corpus.items()
    ]
    return corpus, docs


def _run_job(client, args: argparse.Namespace) -> None:
    corpus, docs = _documents()
    t0 = time.perf_counter()
    client.create_collection(args.collection, args.model, if_not_exists=True)
    result = client.bulk_upsert(args.collection, docs, progress=True)
    took = time.perf_counter() - t0
    print(
        f"collection {args.collection!r}: {len(docs)} passages in {took:.1f}s "
        f"({result.inserted} new, {result.updated} changed, {result.unchanged} unchanged and not re-encoded)"
    )
    for query in args.query or DEMO_QUERIES:
        found = client.search(args.collection, query, k=args.k, method=args.method, fields=["text"])
        print(f"\nQ: {query}   [{args.method}, {found.took_ms:.1f} ms in the service]")
        for rank, hit in enumerate(found.hits, 1):
            doc = corpus[hit.id]
            snippet = " ".join(doc.text.split())[:150]
            print(f"  {rank}. [{hit.score:6.2f}] {doc.title} — {snippet}")


def run(args: argparse.Namespace) -> int:
    from tessera.client import Client
    from tessera.service.process import ServerProcess

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.local:
        with Client.local(data_dir) as client:
            _run_job(client, args)
        return 0
    print(f"starting `tessera serve --data-dir {data_dir}` ...", flush=True)
    t0 = time.perf_counter()
    server = ServerProcess(data_dir, data_dir / "server.log", extra_args=["--log-format", "text"])
    server.start(args.startup_timeout)
    print(f"serving on {server.target} (pid {server.pid}) after {time.perf_counter() - t0:.1f}s")
    try:
        with Client(server.target, timeout=300.0) as client:
            _run_job(client, args)
    finally:
        code = server.stop()
        print(f"\nserver stopped (exit code {code}); log in {server.log_path}")
    return 0 if code == 0 else 1
