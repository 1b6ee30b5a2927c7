"""``tessera serve`` (the gRPC server) and ``tessera search`` (a query from the command line)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from tessera.errors import TesseraError


def register(subparsers) -> None:
    from tessera.training.runtime import add_backend_argument

    p = subparsers.add_parser(
        "serve",
        help="run the gRPC retrieval service",
        description="Serve collections over gRPC (SIGTERM: drain in-flight calls, flush, exit 0).",
    )
    p.add_argument("--data-dir", required=True, help="folder for the indexes (and the SQLite store)")
    p.add_argument(
        "--db",
        default=None,
        help="metadata store URL (default: SQLite in the data dir); e.g. postgresql+psycopg://user@host/db",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 or [::] for all)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="read-write API key (repeatable); with no keys at all, auth is off. "
        "Also TESSERA_API_KEYS (comma-separated)",
    )
    p.add_argument(
        "--read-only-key",
        action="append",
        default=[],
        metavar="KEY",
        help="read-only API key (repeatable). Also TESSERA_READ_ONLY_KEYS",
    )
    p.add_argument("--tls-cert", help="server certificate chain (PEM)")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port; default: off)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument(
        "--max-in-flight", type=int, default=64, help="calls handled at once; more get RESOURCE_EXHAUSTED"
    )
    p.add_argument(
        "--max-queue-ms",
        type=float,
        default=1000.0,
        help="a call that waits longer than this (or than half its deadline) for a worker thread gets "
        "RESOURCE_EXHAUSTED instead of running late (0: only the deadline)",
    )
    p.add_argument("--max-message-mb", type=float, default=32.0, help="largest request or response message")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker threads for encoding and search (default: one per CPU core, 2 to 16)",
    )
    p.add_argument("--grace", type=float, default=30.0, help="seconds to drain in-flight calls on SIGTERM")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads of each search (default 1: concurrent searches use the cores; more "
        "helps only a server with few, heavy queries)",
    )
    p.add_argument("--query-batch", type=int, default=32, help="most queries encoded in one micro-batch")
    add_backend_argument(p, default="auto", flag="--query-backend", what="query encoding")
    add_backend_argument(p, default="auto", flag="--doc-backend", what="document encoding (upserts, reranking)")
    p.add_argument(
        "--encoder-threads",
        type=int,
        default=None,
        help="intra-op threads of the encoder backends (default: one per core)",
    )
    p.add_argument("--device", default="cpu", help="torch device for encoders and indexes (cpu, cuda)")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.set_defaults(func=_serve)

    s = subparsers.add_parser("search", help="search a collection (on a server or a local data dir)")
    s.add_argument("query", help="query text")
    s.add_argument("--collection", "-c", required=True)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="HOST:PORT", help="a running `tessera serve`")
    where.add_argument("--data-dir", help="search a data directory in-process (no server)")
    s.add_argument("--db", default=None, help="metadata store URL for --data-dir")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--method", default=None, help="exact, plaid, xtr, prf or two-stage")
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="method parameter")
    s.add_argument(
        "--filter", default=None, help='metadata filter as JSON, e.g. \'{"year": {"$gte": 2020}}\''
    )
    s.add_argument("--fields", default="text", help="comma-separated fields to show: text, metadata")
    s.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"))
    s.add_argument("--tls", action="store_true", help="connect with TLS")
    s.add_argument("--tls-ca", default=None, help="CA certificate (PEM) to verify the server with")
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--json", action="store_true", help="print JSON lines")
    s.set_defaults(func=_search)
    _register_bench(subparsers)


def _register_bench(subparsers) -> None:
    from pathlib import Path

    from tessera.index.cli import bench_subparsers
    from tessera.training.runtime import add_backend_argument

    b = bench_subparsers(subparsers).add_parser(
        "service",
        help="latency through `tessera serve`: one client, one query at a time (end to end and its parts)",
        description="Index a BEIR corpus once (cached), start `tessera serve` on it, search the split's "
        "queries one at a time from one client and report p50/p95 end to end, the server's own time, and "
        "the query-encoding part.",
    )
    b.add_argument("--data", type=Path, required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    b.add_argument("--model", default="default", help="model name, checkpoint folder or hub id")
    b.add_argument("--split", default="test", help="qrels split whose queries are searched")
    b.add_argument("--queries", type=int, default=300, help="queries searched (timed)")
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--method", default="plaid")
    add_backend_argument(b, default="auto", flag="--query-backend", what="the server's query encoding")
    add_backend_argument(b, default="auto", flag="--doc-backend", what="indexing the corpus")
    b.add_argument("--encoder-threads", type=int, default=None, help="intra-op threads of the encoder backends")
    b.add_argument("--work-dir", type=Path, default=None,
                   help="where indexed data dirs are kept (default: ~/.cache/tessera/bench-service)")
    b.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `tessera serve` argument (repeat; e.g. --server-arg=--workers --server-arg=2)")
    b.add_argument("--json", action="store_true", help="print the report as one JSON object (the last line)")
    b.set_defaults(func=_bench_service)


def _bench_service(args: argparse.Namespace) -> int:
    from tessera.service.bench import format_report, run_service_benchmark

    report = run_service_benchmark(
        args.data,
        args.model,
        query_backend=args.query_backend,
        doc_backend=args.doc_backend,
        threads=args.encoder_threads,
        n_queries=args.queries,
        k=args.k,
        method=args.method,
        split=args.split,
        work_dir=args.work_dir,
        server_args=args.server_arg,
    )
    print(format_report(report))
    if args.json:
        print(json.dumps(report))
    return 0


def _env_keys(name: str) -> list[str]:
    return [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()]


def _serve(args: argparse.Namespace) -> int:
    from tessera.service import logs

    logs.configure(args.log_format, logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    from tessera.service.server import ServerConfig, default_workers, serve

    config = ServerConfig(
        data_dir=args.data_dir,
        db_url=args.db,
        host=args.host,
        port=args.port,
        api_keys=args.api_key + _env_keys("TESSERA_API_KEYS"),
        read_only_keys=args.read_only_key + _env_keys("TESSERA_READ_ONLY_KEYS"),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        max_in_flight=args.max_in_flight,
        max_queue_ms=args.max_queue_ms,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        workers=args.workers or default_workers(),
        grace_s=args.grace,
        max_query_batch=args.query_batch,
        device=args.device,
        query_backend=args.query_backend,
        doc_backend=args.doc_backend,
        encoder_threads=args.encoder_threads,
    )
    return serve(config)


def _param(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise TesseraError(f"--param {text!r}: use NAME=VALUE")
    for cast in (int, float):
        try:
            return name, cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    return name, value


def _search(args: argparse.Namespace) -> int:
    from tessera.client import Client, ServiceError

    try:
        flt = json.loads(args.filter) if args.filter else None
    except json.JSONDecodeError as exc:
        raise TesseraError(f"--filter is not valid JSON: {exc}") from None
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    params = dict(_param(p) for p in args.param)
    if args.server:
        client = Client(
            args.server,
            api_key=args.api_key,
            tls=args.tls or bool(args.tls_ca),
            root_certificates=args.tls_ca,
            timeout=args.timeout,
        )
    else:
        client = Client.local(args.data_dir, db_url=args.db)
    try:
        result = client.search(
            args.collection,
            args.query,
            k=args.k,
            method=args.method,
            params=params,
            filter=flt,
            fields=fields,
        )
    except ServiceError as exc:
        raise TesseraError(f"{exc.code}: {exc}") from None
    finally:
        client.close()
    for rank, hit in enumerate(result.hits, 1):
        if args.json:
            print(
                json.dumps(
                    {
                        "rank": rank,
                        "id": hit.id,
                        "score": hit.score,
                        "text": hit.text,
                        "metadata": hit.metadata,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            text = (hit.text or "").replace("\n", " ")
            line = f"{rank:3d}. {hit.score:8.3f}  {hit.id}"
            if text:
                line += f"  {text[:100]}{'...' if len(text) > 100 else ''}"
            if hit.metadata:
                line += f"  {json.dumps(hit.metadata, ensure_ascii=False)}"
            print(line)
    if not args.json:
        print(f"({len(result.hits)} results in {result.took_ms:.1f} ms)", file=sys.stderr)
    return 0
