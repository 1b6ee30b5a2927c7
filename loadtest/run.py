"""``tessera bench load``: start a server on an indexed collection, run Locust headless, write reports.

    tessera bench load [--data CORPUS] [--model default] [--users 16] [--time 60s] [--rate QPS]
                       [--steps 10,20,40] [--mix mixed] [--out DIR]

Indexes the corpus first when the collection lacks documents (SDK bulk upsert; then the server is
restarted so that the load meets a settled index), runs Locust once (or once per ``--steps`` rate, on
the same server), samples the server's RSS and CPU, stops the server with SIGTERM, and writes to
``--out``: Locust's CSV (``<run>_stats.csv``...) and HTML reports, every call (``<run>_requests.csv``),
``resources.csv``, ``server.log`` and ``summary.json``. Exit status 1 when any call failed (unless
``--allow-failures``), no call was made, or the server did not stop cleanly.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tessera.demo import SAMPLE_CORPUS
from tessera.errors import TesseraError
from tessera.loadtest.workload import DEFAULT_QUERIES, load_queries, parse_mix

HERE = Path(__file__).parent
LOCUSTFILE = HERE / "locustfile.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="BEIR folder or corpus.jsonl (default: the bundled sample)")
    p.add_argument(
        "--queries", type=Path, default=None, help="query texts (default: the --data folder's queries, else bundled)"
    )
    p.add_argument("--model", default="default", help="model of the collection when it is created")
    p.add_argument("--collection", default="loadtest")
    p.add_argument("--data-dir", type=Path, default=None, help="server data dir, reused (default: OUT/server-data)")
    p.add_argument("--server", metavar="HOST:PORT", help="load an already running server instead of starting one")
    p.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"), help="API key (default: a random one)")
    p.add_argument("--users", "-u", type=int, default=16, help="simulated users (one gRPC channel each)")
    p.add_argument("--spawn-rate", "-r", type=float, default=None, help="users started per second (default: all)")
    p.add_argument("--time", "-t", default="60s", help="run time per run/step (Locust syntax: 20s, 10m)")
    p.add_argument("--rate", type=float, default=0.0, help="target total QPS (Poisson; 0: closed loop)")
    p.add_argument("--steps", default=None, help="comma-separated QPS steps, one Locust run each (capacity)")
    p.add_argument("--mix", default="mixed", help="mixed, read, plaid, or ACTION=WEIGHT,... (see locustfile)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--timeout", type=float, default=10.0, help="client deadline per call, seconds")
    p.add_argument("--batch-size", type=int, default=256, help="documents per message when indexing")
    p.add_argument(
        "--no-restart",
        action="store_true",
        help="after indexing, load the same server process (default: restart it, so that the load meets a "
        "settled index and a fresh process)",
    )
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra `tessera serve` argument")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS/CPU samples")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when calls failed (overload steps)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: loadtest-results/<UTC time>)")


def register(subparsers) -> None:
    from tessera.index.cli import bench_subparsers

    p = bench_subparsers(subparsers).add_parser(
        "load",
        help="Locust load test of a server (started here on an indexed collection)",
        description="Start a server on an indexed collection (indexing the corpus if needed), run Locust "
        "headless for a given time and user count (or a series of QPS steps), write CSV and HTML reports, "
        "stop the server. Exit status 1 when any call failed.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


# -- inputs --------------------------------------------------------------------------------------
def corpus_path(data: Path | None) -> Path:
    path = data or SAMPLE_CORPUS
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise TesseraError(f"--data: {path} not found (give a BEIR folder or a corpus.jsonl)")
    return path


def queries_path(queries: Path | None, data: Path | None) -> Path:
    if queries is not None:
        if not queries.is_file():
            raise TesseraError(f"--queries: {queries} not found")
        return queries
    if data is not None and data.is_dir() and (data / "queries.jsonl").is_file():
        return data / "queries.jsonl"
    return DEFAULT_QUERIES


def parse_steps(text: str | None, rate: float) -> list[float]:
    if not text:
        return [rate]
    try:
        steps = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise TesseraError(f"--steps {text!r}: give comma-separated numbers of queries per second") from None
    if not steps or any(s <= 0 for s in steps):
        raise TesseraError(f"--steps {text!r}: every step must be a positive rate")
    return steps


def ensure_indexed(target: str, api_key: str | None, collection: str, model: str, corpus: Path, batch: int) -> bool:
    """Create the collection and bulk-upsert the corpus unless it holds it already; True if it indexed."""
    from tessera.client import Client, NotFound
    from tessera.datasets import load_corpus

    docs = load_corpus(corpus)
    with Client(target, api_key=api_key, timeout=600.0) as client:
        try:
            info = client.describe_collection(collection)
        except NotFound:
            info = client.create_collection(collection, model)
        if info.model != model and Path(model).expanduser().resolve().as_posix() != info.model:
            print(f"note: collection {collection!r} exists with model {info.model!r}; keeping it", file=sys.stderr)
        if info.documents >= len(docs):
            return False
        t0 = time.perf_counter()
        result = client.bulk_upsert(
            collection,
            ({"id": d.id, "text": d.full_text, "metadata": {"title": d.title}} for d in docs.values()),
            batch_size=batch,
            total=len(docs),
        )
        print(
            f"indexed {result.inserted} new, {result.updated} changed documents of {corpus} "
            f"into {collection!r} in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    return True


# -- Locust --------------------------------------------------------------------------------------
def run_locust(args, target: str, api_key: str | None, queries: Path, rate: float, prefix: Path) -> int:
    users = args.users
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    cmd += ["-u", str(users), "-r", str(args.spawn_rate or users), "-t", args.time, "--host", target]
    cmd += ["--csv", str(prefix), "--html", f"{prefix}.html", "--stop-timeout", str(math.ceil(args.timeout))]
    cmd += ["--collection", args.collection, "--queries", str(queries), "--mix", args.mix, "--rate", str(rate)]
    cmd += ["--k", str(args.k), "--timeout", str(args.timeout), "--request-log", f"{prefix}_requests.csv"]
    cmd += ["--loglevel", "WARNING"]
    if args.steps:
        cmd.append("--reset-stats")  # measure after the ramp
    env = dict(os.environ, TESSERA_API_KEY=api_key or "")
    with open(f"{prefix}.log", "wb") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))]


def summarize(prefix: Path, warmup_s: float = 0.0) -> dict:
    """Figures from the per-call log: failures by status over the whole run; rates and the latency of
    successful calls over the calls started after ``warmup_s``."""
    with open(f"{prefix}_requests.csv", newline="") as fh:
        every = list(csv.DictReader(fh))
    failures = Counter(r["status"] for r in every if r["status"] != "OK")
    rows = every
    if rows and warmup_s:
        t0 = min(float(r["start_s"]) for r in rows)
        rows = [r for r in rows if float(r["start_s"]) >= t0 + warmup_s]
    ok = sorted(float(r["ms"]) for r in rows if r["status"] == "OK")
    span = 0.0
    if rows:
        starts = [float(r["start_s"]) for r in rows]
        span = max(starts) - min(starts)
    by_name: dict[str, dict] = {}
    for name in sorted({r["name"] for r in every}):
        lat = sorted(float(r["ms"]) for r in rows if r["name"] == name and r["status"] == "OK")
        by_name[name] = {
            "calls": sum(1 for r in every if r["name"] == name),
            "failures": sum(1 for r in every if r["name"] == name and r["status"] != "OK"),
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
        }
    return {
        "calls": len(every),
        "failures": sum(failures.values()),
        "failures_by_status": dict(failures),
        "measured_calls": len(rows),
        "achieved_qps": round(len(rows) / span, 2) if span > 0 else None,
        "ok_qps": round(len(ok) / span, 2) if span > 0 else None,
        "p50_ms": percentile(ok, 50),
        "p95_ms": percentile(ok, 95),
        "p99_ms": percentile(ok, 99),
        "max_ms": ok[-1] if ok else None,
        "by_name": by_name,
    }


def server_load(rows, start: float, end: float, ok_qps: float | None) -> dict:
    """Mean server CPU (% of one core) and machine load over [start, end] from the resource samples,
    and the server's CPU time per successful call (a figure that machine contention hardly moves)."""
    window = [r for r in rows if start <= r[0] <= end]
    if not window:
        return {}
    cpu = sum(r[3] for r in window) / len(window)
    return {
        "server_cpu_pct": round(cpu, 1),
        "loadavg_1m": round(sum(r[4] for r in window) / len(window), 2),
        "server_cpu_ms_per_ok_call": round(10 * cpu / ok_qps, 1) if ok_qps else None,
    }


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


# -- the job -------------------------------------------------------------------------------------
def _check_locust() -> None:
    import importlib.util

    # not imported here: importing locust monkey-patches this process for gevent
    if importlib.util.find_spec("locust") is None:
        raise TesseraError("Locust is not installed: pip install 'tessera[loadtest]'")


def run(args: argparse.Namespace) -> int:
    """Index if needed, load the server (each step), stop it, report; non-zero when anything failed."""
    from tessera.loadtest.server import ResourceSampler
    from tessera.service.process import ServerProcess

    _check_locust()
    if args.users < 1:
        raise TesseraError("--users must be at least 1")
    steps = parse_steps(args.steps, args.rate)
    corpus = corpus_path(args.data)
    queries = queries_path(args.queries, args.data)
    try:  # bad input is reported before a server starts
        parse_mix(args.mix)
        load_queries(queries)
    except (ValueError, UnicodeDecodeError) as exc:
        message = str(exc)
        raise TesseraError(
            message if message.startswith(("--mix", str(queries))) else f"{queries}: {message}"
        ) from None
    out = args.out or Path("loadtest-results") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    api_key = args.api_key or (None if args.server else secrets.token_urlsafe(16))

    server = None
    target = args.server
    summary: dict = {"command": sys.argv, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    summary["loadavg_before"] = Path("/proc/loadavg").read_text().split()[:3]
    try:
        if target is None:
            server = ServerProcess(
                args.data_dir or out / "server-data", out / "server.log", api_key=api_key, extra_args=args.server_arg
            ).start()
            target = server.target
        indexed = ensure_indexed(target, api_key, args.collection, args.model, corpus, args.batch_size)
        if indexed and server and not args.no_restart:
            code = server.stop()  # waits for any background re-training; the load meets a fresh process
            if code != 0:
                raise TesseraError(f"the server exited with code {code} after indexing; see {server.log_path}")
            server = ServerProcess(
                server.data_dir, server.log_path, api_key=api_key, extra_args=args.server_arg
            ).start()
            target = server.target
        sampler = ResourceSampler(server.pid, out / "resources.csv", args.sample_every).start() if server else None
        runs = []
        for i, rate in enumerate(steps):
            name = f"step{i + 1}-{rate:g}qps" if args.steps else "run"
            prefix = out / name
            t0 = time.time()
            rc = run_locust(args, target, api_key, queries, rate, prefix)
            result = {
                "name": name,
                "target_qps": rate or None,
                "users": args.users,
                "locust_exit": rc,
                "started_s": round(t0, 1),
                "ended_s": round(time.time(), 1),
                **summarize(prefix, warmup_s=5.0 if args.steps else 0.0),
            }
            runs.append(result)
            print(
                f"{name}: {result['calls']} calls, {result['failures']} failed {result['failures_by_status'] or ''}, "
                f"{_fmt(result['achieved_qps'])} QPS, p50 {_fmt(result['p50_ms'])} ms, "
                f"p99 {_fmt(result['p99_ms'])} ms",
                file=sys.stderr,
            )
        summary["runs"] = runs
        if sampler is not None:
            rows = sampler.stop()
            if rows:
                rss = [r[2] for r in rows]
                summary["server_rss_mb"] = {"first": rss[0], "last": rss[-1], "max": max(rss), "samples": len(rss)}
                for r in runs:
                    r.update(
                        server_load(rows, r["started_s"] + (5.0 if args.steps else 0.0), r["ended_s"], r["ok_qps"])
                    )
    finally:
        if server is not None:
            code = server.stop()
            summary["server_exit"] = code
    summary["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"reports in {out}", file=sys.stderr)

    failed = sum(r["failures"] for r in runs)
    problems = []
    if failed and not args.allow_failures:
        problems.append(f"{failed} calls failed")
    if any(r["calls"] == 0 for r in runs):
        problems.append("a run made no calls")
    if any(r["locust_exit"] not in (0, 1) for r in runs):
        problems.append("Locust exited abnormally (see its .log)")
    if summary.get("server_exit", 0) != 0:
        problems.append(f"the server exited with code {summary['server_exit']}")
    if problems:
        print("load test failed: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.loadtest.run", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except TesseraError as exc:
        print(f"load test: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
