"""The Locust load test (loadtest/): a 20-second smoke run against a real server, and its helpers."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import pytest

from tessera.loadtest import run as load
from tessera.loadtest.workload import MIXES, load_queries, parse_mix

needs_locust = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="Locust is not installed (pip install -e '.[loadtest]')"
)


def test_bundled_queries_and_mixes(tmp_path):
    assert len(load_queries(load.DEFAULT_QUERIES)) >= 40
    beir = tmp_path / "queries.jsonl"
    beir.write_text('{"_id": "1", "text": "what is MaxSim"}\n\n{"_id": "2", "text": "plaid"}\n')
    assert load_queries(beir) == ["what is MaxSim", "plaid"]
    assert parse_mix("plaid") == MIXES["plaid"]
    assert parse_mix("search_xtr=3, upsert=1") == {"search_xtr": 3.0, "upsert": 1.0}
    for bad in ("search_nothing=1", "upsert", "upsert=0"):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)


def test_summary_counts_failures_and_success_latency(tmp_path):
    log = tmp_path / "x_requests.csv"
    rows = [(100.0 + i / 10, "Search/plaid", float(i + 1), "OK") for i in range(100)]
    rows += [(105.0, "Search/plaid", 0.5, "RESOURCE_EXHAUSTED"), (109.9, "Upsert", 3.0, "DEADLINE_EXCEEDED")]
    with log.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["start_s", "name", "ms", "status"])
        out.writerows(rows)
    s = load.summarize(tmp_path / "x")
    assert (s["calls"], s["failures"]) == (102, 2)
    assert s["failures_by_status"] == {"RESOURCE_EXHAUSTED": 1, "DEADLINE_EXCEEDED": 1}
    assert (s["p50_ms"], s["p99_ms"], s["max_ms"]) == (50.0, 99.0, 100.0)  # failures not in latency
    assert s["by_name"]["Upsert"] == {"calls": 1, "failures": 1, "p50_ms": None, "p99_ms": None}
    late = load.summarize(tmp_path / "x", warmup_s=5.0)  # latency and rates from the calls after 5 s
    assert (late["measured_calls"], late["failures"], late["p50_ms"]) == (52, 2, 75.0)


@needs_locust
def test_smoke_20s_against_a_real_server(tiny_model_dir, tmp_path):
    """Server started on the bundled sample corpus, 20 s of the mixed load, every call succeeds."""
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "tessera.loadtest.run", "--model", str(tiny_model_dir), "--users", "4"]
    cmd += ["--rate", "8", "--time", "20s", "--out", str(out), "--no-restart", "--sample-every", "2"]
    cmd += ["--server-arg=--torch-threads=1", "--server-arg=--workers=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    (result,) = summary["runs"]
    assert result["failures"] == 0 and result["calls"] >= 60, result
    assert {"Search/plaid", "Search/xtr", "Upsert"} <= set(result["by_name"])
    assert summary["server_exit"] == 0
    with (out / "run_stats.csv").open() as fh:
        total = [r for r in csv.DictReader(fh) if r["Name"] == "Aggregated"][0]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0
    assert "<html" in (out / "run.html").read_text()[:2000].lower()
    assert summary["server_rss_mb"]["samples"] >= 5
