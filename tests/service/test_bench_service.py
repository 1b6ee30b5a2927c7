"""``tessera bench service`` on a tiny BEIR folder: a real server child process, one client, cached index."""

from __future__ import annotations

import json

import pytest
from service_helpers import make_docs

from tessera.cli import main


def _beir(root, n_docs=40, n_queries=6):
    root.mkdir()
    docs = make_docs(n_docs)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d["id"], "title": "", "text": d["text"]}) + "\n" for d in docs)
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": docs[i]["text"]}) + "\n" for i in range(n_queries))
    )
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(n_queries))
    )
    return root


@pytest.mark.slow  # two server child processes: ~30 s on a quiet machine, minutes on a busy one
def test_bench_service_reports_every_part(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
    data = _beir(tmp_path / "beir")
    args = ["bench", "service", "--data", str(data), "--model", str(tiny_model_dir), "--queries", "6",
            "--query-backend", "torch", "--doc-backend", "torch", "--method", "exact", "--work-dir",
            str(tmp_path / "work"), "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert "end to end (client)" in out and "query encoding alone" in out
    for part in ("end_to_end", "server_took", "query_encoding_alone"):
        assert report[part]["n"] == 6 and 0 < report[part]["p50_ms"] <= report[part]["p95_ms"]
    assert report["server_query_encoding"]["n"] == 6  # one encoding batch per query, seen by the metrics
    assert report["server_search"]["n"] == 6
    assert report["end_to_end"]["p50_ms"] >= report["server_took"]["p50_ms"]
    # each query is its document's text: exact search finds it first
    assert report["quality"]["ndcg@10"] == 1.0 and sum(report["quality"]["segment_docs"]) == 40
    assert "nDCG@10 1.0" in out
    data_dir = report["meta"]["data_dir"]
    # a second run reuses the indexed data directory
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["meta"]["data_dir"] == data_dir


def test_bench_service_needs_a_corpus(tmp_path, capsys):
    assert main(["bench", "service", "--data", str(tmp_path)]) == 2
    assert "no corpus.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["--queries=0", "--k=0"])
def test_bench_service_bad_counts(tmp_path, capsys, bad):
    data = _beir(tmp_path / "beir")
    assert main(["bench", "service", "--data", str(data), bad]) == 2
    assert "must be positive" in capsys.readouterr().err
