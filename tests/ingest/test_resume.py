"""A real crash: the job is SIGKILLed mid-run, run again with the same arguments, and the collection ends
up holding exactly the corpus: every id once, nothing missing, store and index agreeing."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import write_beir
from service_helpers import make_docs

from tessera.client import Client


def _committed(state) -> int:
    """Documents the job has committed so far, read from its checkpoint file (0 before the first)."""
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'progress'").fetchone()
    except sqlite3.OperationalError:  # created but no table yet
        return 0
    return json.loads(row[0])["counters"]["documents"] if row else 0


def test_sigkill_mid_run_then_resume(tmp_path, tiny_model_dir):
    _kill_and_resume(tmp_path, tiny_model_dir, n_docs=800, kills=1)


@pytest.mark.slow
def test_repeated_sigkills_at_random_points(tmp_path, tiny_model_dir):
    _kill_and_resume(tmp_path, tiny_model_dir, n_docs=3000, kills=4, seed=1)


def _kill_and_resume(tmp_path, tiny_model_dir, n_docs: int, kills: int, seed: int = 0) -> None:
    docs = make_docs(n_docs, seed=11)
    corpus = write_beir(tmp_path / "corpus.jsonl", docs)
    data, state = tmp_path / "data", tmp_path / "job.state"
    cmd = [
        sys.executable,
        "-m",
        "tessera.cli",
        "index",
        "--corpus",
        str(corpus),
        "-c",
        "c",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(data),
        "--state",
        str(state),
        "--buffer",
        "20",
        "--torch-threads",
        "1",
        "--index-setting",
        "auto_retrain=false",
        "--no-progress",
        "--json",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(seed)
    committed = []
    for _ in range(kills):
        before = _committed(state)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 120
        while _committed(state) <= before + 40 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.2))  # somewhere inside a later buffer, or between two
        assert proc.poll() is None, "the job finished before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        committed.append(_committed(state))
    assert 0 < committed[0] and committed == sorted(set(committed)) and committed[-1] < n_docs

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert "resuming at line" in done.stderr
    assert summary["resumed"] and summary["runs"] == kills + 1 and summary["complete"]
    assert summary["documents"] == summary["read"] == n_docs and summary["skipped_total"] == 0
    assert summary["inserted"] + summary["updated"] + summary["unchanged"] == n_docs
    assert summary["updated"] == 0  # a re-sent document has the same text: unchanged, not re-encoded

    ids = [d["id"] for d in docs]
    with Client.local(data) as c:
        c._engine.check_consistency("c")  # store and index hold the same ids, all indexed
        info = c.describe_collection("c")
        got = c.get("c", ids)
        assert info.documents == n_docs and not got.missing_ids and len(got) == n_docs
        assert sorted(d.id for d in got) == sorted(ids)
        assert [d.text for d in got] == [d["text"] for d in docs]
        assert info.vectors == summary["index"]["vectors"]
