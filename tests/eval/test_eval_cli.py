"""``tessera eval`` through tessera.cli.main: JSON output, the table, and clean errors."""

from __future__ import annotations

import json

import pytest
from eval_helpers import DOCS, QUERIES, write_beir

from tessera.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_the_last_stdout_line(beir_dir, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, "--data", str(beir_dir), "--model", "bm25", "--json", "--cache-dir", str(tmp_path / "c")
    )
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    for key in (
        "ndcg@10",
        "recall@100",
        "mrr@10",
        "map",
        "queries",
        "docs",
        "encode_seconds",
        "search_seconds",
        "model",
        "method",
        "split",
    ):
        assert key in result
    assert (result["model"], result["method"], result["split"], result["k"]) == (
        "bm25",
        "exact",
        "test",
        1000,
    )
    assert result["ndcg@10"] == 1.0 and result["docs"] == len(DOCS)


def test_json_for_a_checkpoint(beir_dir, tmp_path, tiny_checkpoint, capsys):
    code, out, _ = run_cli(
        capsys,
        "--data",
        str(beir_dir),
        "--model",
        str(tiny_checkpoint),
        "--json",
        "--k",
        "100",
        "--batch-size",
        "3",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["k"] == 100 and result["doc_cache"] == "miss" and result["queries"] == len(QUERIES)


def test_table(beir_dir, capsys):
    code, out, _ = run_cli(capsys, "--data", str(beir_dir), "--model", "bm25", "--no-cache")
    assert code == 0
    for label in ("nDCG@10", "Recall@100", "MRR@10", "MAP", "encode", "search"):
        assert label in out
    assert "1.0000" in out


def expect_error(capsys, args: list[str], *fragments: str) -> str:
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert err.startswith("tessera eval: error: ")
    for fragment in fragments:
        assert fragment in err
    return err


def test_missing_data_folder(tmp_path, capsys):
    expect_error(capsys, ["--data", str(tmp_path / "nope"), "--model", "bm25"], "data folder not found")


def test_malformed_jsonl_line(beir_dir, capsys):
    lines = (beir_dir / "corpus.jsonl").read_text().splitlines()
    lines[2] = '{"_id": "d3", "text": '
    (beir_dir / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    expect_error(capsys, ["--data", str(beir_dir), "--model", "bm25"], "corpus.jsonl:3:", "malformed JSON")


def test_qrels_with_unknown_document(tmp_path, capsys):
    root = write_beir(tmp_path / "b", qrels={"q1": {"d1": 1, "nodoc": 1}})
    expect_error(
        capsys, ["--data", str(root), "--model", "bm25"], "document id(s) not in corpus.jsonl", "nodoc"
    )


def test_qrels_with_unknown_query(tmp_path, capsys):
    root = write_beir(tmp_path / "b", qrels={"q1": {"d1": 1}, "noquery": {"d2": 1}})
    expect_error(
        capsys, ["--data", str(root), "--model", "bm25"], "query id(s) not in queries.jsonl", "noquery"
    )


def test_unknown_split(beir_dir, capsys):
    expect_error(
        capsys,
        ["--data", str(beir_dir), "--model", "bm25", "--split", "dev"],
        "no qrels for split 'dev'",
        "available: test",
    )


def test_unknown_model(beir_dir, capsys):
    expect_error(capsys, ["--data", str(beir_dir), "--model", "nosuch"], "unknown model 'nosuch'")


def test_unknown_method(beir_dir, tiny_checkpoint, capsys):
    expect_error(
        capsys,
        ["--data", str(beir_dir), "--model", str(tiny_checkpoint), "--method", "fast"],
        "unknown search method 'fast'",
        "available: exact",
    )


def test_method_on_a_baseline(beir_dir, capsys):
    expect_error(capsys, ["--data", str(beir_dir), "--model", "bm25", "--method", "plaid"], "--method exact")


def test_bad_params(beir_dir, tiny_checkpoint, capsys):
    expect_error(
        capsys,
        [
            "--data",
            str(beir_dir),
            "--model",
            str(tiny_checkpoint),
            "--method",
            "plaid",
            "--params",
            "{ncells",
        ],
        "--params is not valid JSON",
    )
    expect_error(
        capsys,
        [
            "--data",
            str(beir_dir),
            "--model",
            str(tiny_checkpoint),
            "--method",
            "plaid",
            "--params",
            '{"nosuch": 1}',
            "--no-cache",
        ],
        "method 'plaid'",
        "nosuch",
    )


def test_split_without_queries(tmp_path, capsys):
    root = write_beir(tmp_path / "b", qrels={})
    expect_error(capsys, ["--data", str(root), "--model", "bm25"], "no judged queries")


@pytest.mark.parametrize("k", ["10", "500"])
def test_k_choices(beir_dir, capsys, k):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--data", str(beir_dir), "--model", "bm25", "--k", k])
    assert exc.value.code == 2
    assert "--k" in capsys.readouterr().err
