"""``tessera bench search`` end to end on small synthetic data."""

from __future__ import annotations

import argparse
import json

from tessera.cli import main
from tessera.index.cli import bench_subparsers, register


def test_bench_search_synthetic_json(tmp_path, capsys):
    code = main(
        [
            "bench",
            "search",
            "--synthetic",
            "12000",
            "--dim",
            "32",
            "--queries",
            "6",
            "--ncentroids",
            "256",
            "--methods",
            "exact,plaid,plaid-compressed,xtr,prf",
            "--exact-queries",
            "3",
            "--json",
            "--cache",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result) == {"exact", "plaid", "plaid-compressed", "xtr", "prf"}
    for entry in result.values():
        for key in ("recall@10", "recall@100", "ndcg@10", "p50_ms", "p95_ms", "qps", "bytes_per_vector"):
            assert key in entry
        assert 0.0 <= entry["recall@10"] <= 1.0 and entry["p50_ms"] > 0
    assert result["exact"]["recall@10"] == 1.0  # fp16 originals kept: exact is exact
    assert result["exact"]["measured_queries"] == 3
    assert result["plaid-compressed"]["bytes_per_vector"] == 4 + 32 * 2 // 8
    assert result["plaid"]["dot_products"] > result["xtr"]["dot_products"]
    assert any(f.name.startswith("truth-") for f in (tmp_path / "cache" / "bench").iterdir())


def test_bench_errors_are_clean(tmp_path, capsys):
    assert main(["bench", "search", "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "search", "--synthetic", "2000", "--dim", "32", "--methods", "bogus"]) == 2
    assert "unknown benchmark method" in capsys.readouterr().err


def test_bench_group_is_shared_with_other_subcommands():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    bench_subparsers(sub).add_parser("train").set_defaults(func="other")
    assert parser.parse_args(["bench", "train"]).func == "other"
    assert parser.parse_args(["bench", "search", "--synthetic", "10"]).synthetic == 10


def test_index_build_info_search(tmp_path, tiny_encoder, capsys):
    from tessera.training.checkpoints import save_checkpoint

    model = save_checkpoint(tiny_encoder, tmp_path / "model")
    words = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota", "kappa lambda mu"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(
            json.dumps({"_id": f"d{i}", "title": f"t{i}", "text": words[i % 4] + f" {i}"}) for i in range(30)
        )
    )
    out = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "build",
                "--data",
                str(corpus),
                "--model",
                str(model),
                "--out",
                str(out),
                "--batch",
                "10",
                "--keep-vectors",
            ]
        )
        == 0
    )
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["documents"] == 30 and built["full_vector_bytes"] > 0
    assert main(["index", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 30 and info["nbits"] == 2
    assert (
        main(
            [
                "index",
                "search",
                str(out),
                "delta epsilon",
                "--model",
                str(model),
                "--k",
                "3",
                "--method",
                "exact",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Q: delta epsilon" and len(lines) == 4
    assert main(["index", "search", str(out), "x", "--model", str(model), "--method", "nope"]) == 2
    assert "unknown search method" in capsys.readouterr().err
    assert main(["index", "info", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_index_build_of_a_crisp_model_defaults_to_4_bits(tmp_path, tiny_bert_dir, capsys):
    import torch

    from tessera.training.checkpoints import new_encoder, save_checkpoint
    from tessera.training.config import EncoderConfig
    from tessera.training.crisp import ClusterSpec

    torch.manual_seed(0)
    cfg = ClusterSpec.parse("C2x4").apply(EncoderConfig(backbone=str(tiny_bert_dir), dim=16, doc_maxlen=32))
    model = save_checkpoint(new_encoder(cfg), tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": f"d{i}", "text": f"word{i} other text {i}"}) for i in range(12)))
    for extra, nbits, quantizer in (([], 4, "scalar"), (["--nbits", "2", "--quantizer", "pq"], 2, "pq")):
        out = tmp_path / f"idx{nbits}"
        assert main(["index", "build", "--data", str(corpus), "--model", str(model), "--out", str(out), *extra]) == 0
        capsys.readouterr()
        assert main(["index", "info", str(out)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["nbits"], info["quantizer"]) == (nbits, quantizer)
