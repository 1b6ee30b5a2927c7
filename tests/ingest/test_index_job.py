"""`tessera index --corpus ...` in-process: local data dir and server targets, the summary, bad input
(skipped with line numbers, or --strict), re-runs, and clean errors."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import write_beir
from service_helpers import start_server

from tessera.cli import main
from tessera.client import Client
from tessera.training.checkpoints import load_encoder

FAST = ["--index-setting", "auto_retrain=false", "--no-progress"]


def _run(capsys, *args) -> tuple[int, dict | None, str]:
    code = main(["index", *args])
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    summary = json.loads(lines[-1]) if code == 0 and "--json" in args else None
    return code, summary, out.err


def _truncated(enc, texts) -> int:
    """Texts with more tokens than the model keeps (doc_maxlen less [CLS], marker, [SEP])."""
    limit = enc.config.doc_maxlen - 3
    return sum(len(enc.tokenizer(t, add_special_tokens=False)["input_ids"]) > limit for t in texts)


def _ids(data_dir, collection="c") -> list[str]:
    with Client.local(data_dir) as c:
        info = c.describe_collection(collection)
        c._engine.check_consistency(collection)
        got = c.get(collection, [f"d{i}" for i in range(1000)])
        assert info.documents == len(got)
        return sorted(d.id for d in got)


def test_beir_into_a_data_dir_then_served(tmp_path, docs, tiny_model_dir, capsys, caplog):
    corpus = write_beir(tmp_path / "corpus.jsonl", docs)
    data = tmp_path / "data"
    args = ["--corpus", str(corpus), "-c", "c", "--model", str(tiny_model_dir), "--data-dir", str(data)]
    code, s, _ = _run(
        capsys, *args, "--buffer", "32", "--index-setting", "keep_vectors=true", "--backend", "torch", "--json", *FAST
    )
    assert code == 0 and s["encoder_backend"] == "torch"
    assert s["documents"] == s["inserted"] == s["read"] == len(docs) and s["complete"] and not s["resumed"]
    assert s["skipped_total"] == 0 and s["format"] == "beir" and s["bytes"] == corpus.stat().st_size
    # vectors: exactly what the model gives for the BEIR "title text"
    enc = load_encoder(str(tiny_model_dir))
    packed = enc.encode_documents([d["text"] for d in docs], progress=False)
    assert s["vectors"] == int(packed.lengths.sum()) == s["index"]["vectors"]
    assert s["truncated"] == _truncated(enc, [d["text"] for d in docs]) > 0
    assert s["docs_per_s"] > 0 and s["index"]["documents"] == len(docs)
    assert _ids(data) == sorted(d["id"] for d in docs)

    with Client.local(data) as c:  # stored vectors equal the model's (exact MaxSim of a query)
        q = enc.encode_queries(["protein expression"])[0]
        hits = c.rerank("c", q, ids=[d["id"] for d in docs[:20]])
        ref = [(q.float() @ packed.doc(i).float().T).max(dim=1).values.sum().item() for i in range(20)]
        for h in hits:
            assert h.score == pytest.approx(ref[h.index], abs=1e-2)
        got = c.get("c", ["d7"]).documents[0]
        assert got.text == docs[7]["text"] and got.metadata == docs[7]["metadata"]

    # a complete job run again does nothing; --restart re-reads without re-encoding
    code, s2, _ = _run(capsys, *args, "--json", *FAST)
    assert code == 0 and s2["already_complete"] and s2["documents"] == len(docs)
    code, s3, _ = _run(capsys, *args, "--json", "--restart", *FAST)
    assert code == 0 and s3["unchanged"] == len(docs) and s3["vectors"] == 0

    # a changed corpus file is indexed again: changed texts re-encoded, the rest unchanged
    docs2 = [dict(d, text=d["text"] + " cat") if i % 10 == 0 else d for i, d in enumerate(docs)]
    write_beir(corpus, docs2 + [{"id": "d999", "text": "new dog", "metadata": {}}])
    code, s4, _ = _run(capsys, *args, "--json", *FAST)
    assert code == 0 and "the corpus file changed" in caplog.text
    assert (s4["inserted"], s4["updated"], s4["unchanged"]) == (1, 12, 108)

    # the data dir is the service's: a server opened on it answers
    srv = start_server(data)
    try:
        with Client(f"127.0.0.1:{srv.port}") as c:
            assert c.describe_collection("c").documents == len(docs) + 1
            assert len(c.search("c", "protein", k=3).hits) == 3
    finally:
        srv.stop()


def test_onnx_backends(tmp_path, docs, tiny_model_dir, capsys, monkeypatch):
    """--backend picks the document encoder: ONNX Runtime fp32 gives the torch vectors, and the default
    (auto) is int8 ONNX where onnxruntime is installed; a bad spec fails before anything is written."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
    corpus = write_beir(tmp_path / "corpus.jsonl", docs[:40])
    enc = load_encoder(str(tiny_model_dir))
    texts = [d["text"] for d in docs[:40]]
    ids = [d["id"] for d in docs[:40]]
    packed = enc.encode_documents(texts, progress=False)
    q = enc.encode_queries(["protein expression"])[0]
    ref = {d: (q.float() @ packed.doc(i).float().T).max(dim=1).values.sum().item() for i, d in enumerate(ids)}
    for backend, tol in (("onnx", 1e-2), (None, 0.5)):
        data = tmp_path / f"data-{backend}"
        args = ["--corpus", str(corpus), "-c", "c", "--model", str(tiny_model_dir), "--data-dir", str(data)]
        more = ["--backend", backend] if backend else []
        code, s, err = _run(capsys, *args, *more, "--index-setting", "keep_vectors=true", "--json", *FAST)
        assert code == 0, err
        assert s["encoder_backend"] == (backend or "onnx-int8") and s["vectors"] == int(packed.lengths.sum())
        with Client.local(data) as c:
            hits = c.rerank("c", q, ids=list(ref))
            for h in hits:
                assert h.score == pytest.approx(ref[h.id], abs=tol)
    code, _, err = _run(capsys, *args, "--backend", "tensorrt", "--restart", *FAST)
    assert code != 0 and "unknown encoder backend" in err


def test_to_a_server_with_bulk_upsert(tmp_path, docs, tiny_model_dir, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"key": d["id"], "body": d["text"], **d["metadata"]}) for d in docs[:50]))
    srv = start_server(tmp_path / "srv", api_keys=["k1"])
    try:
        args = [
            "--corpus",
            str(corpus),
            "-c",
            "remote",
            "--model",
            str(tiny_model_dir),
            "--server",
            f"127.0.0.1:{srv.port}",
            "--id-field",
            "key",
            "--text-field",
            "body",
            "--metadata-fields",
            "lang,year",
            "--state",
            str(tmp_path / "job.state"),
            "--buffer",
            "16",
            "--upsert-batch",
            "5",
            "--json",
            *FAST,
        ]
        code, _, err = _run(capsys, *args)
        assert code == 2 and "UNAUTHENTICATED" in err
        code, s, _ = _run(capsys, *args, "--api-key", "k1")
        assert code == 0 and s["inserted"] == 50 and s["vectors"] is None and s["target"].startswith("server:")
        enc = load_encoder(str(tiny_model_dir))  # counted here: the model is on this machine too
        assert s["truncated"] == _truncated(enc, [d["text"] for d in docs[:50]])
        with Client(f"127.0.0.1:{srv.port}", api_key="k1") as c:
            assert c.describe_collection("remote").documents == 50
            assert c.get("remote", ["d3"]).documents[0].metadata == {
                k: docs[3]["metadata"][k] for k in ("lang", "year")
            }
    finally:
        srv.stop()


def _bad_corpus(path, docs):
    long_text = " ".join(["cell"] * 200)
    lines = [json.dumps({"id": d["id"], "text": d["text"]}) for d in docs[:10]]
    lines[2] = '{"id": "d2", "text": "broken'  # line 3: malformed
    lines[4] = json.dumps({"id": "d4", "text": "   "})  # line 5: empty
    lines[6] = json.dumps({"id": "d1", "text": "again"})  # line 7: duplicate of line 2
    lines[8] = json.dumps({"id": "d8", "text": long_text})  # line 9: truncated, kept
    lines.append(json.dumps({"id": "x" * 600, "text": "long id"}))  # line 11: too large
    lines.append(json.dumps({"id": "d10", "text": "fine", "meta": float("nan")}))  # line 12: NaN metadata
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_input_is_skipped_counted_and_reported(tmp_path, docs, tiny_model_dir, capsys):
    corpus = _bad_corpus(tmp_path / "bad.jsonl", docs)
    args = [
        "--corpus",
        str(corpus),
        "-c",
        "c",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(tmp_path / "d"),
        "--metadata-fields",
        "meta",
        "--json",
        *FAST,
    ]
    code, s, err = _run(capsys, *args)
    assert code == 0
    assert s["skipped"] == {"malformed": 2, "empty": 1, "duplicate": 1, "too_large": 1}
    assert s["documents"] == 7 and s["read"] == 12 and s["truncated"] >= 1
    for needle in (
        "skipped: bad.jsonl:3: malformed JSON",
        "skipped: bad.jsonl:5: document 'd4' has an empty text",
        "skipped: bad.jsonl:7: duplicate id 'd1' (first at line 2); the first is kept",
        "skipped: bad.jsonl:11: id longer than 512 bytes",
        "skipped: bad.jsonl:12: metadata of 'd10' holds NaN or infinite numbers",
    ):
        assert needle in err
    assert len(s["skipped_examples"]) == 5 and "Traceback" not in err
    assert _ids(tmp_path / "d") == sorted(["d0", "d1", "d3", "d5", "d7", "d8", "d9"])
    with Client.local(tmp_path / "d") as c:
        assert c.get("c", ["d1"]).documents[0].text == docs[1]["text"]  # the first occurrence


def test_strict_stops_at_the_first_bad_line(tmp_path, docs, tiny_model_dir, capsys):
    corpus = _bad_corpus(tmp_path / "bad.jsonl", docs)
    args = [
        "--corpus",
        str(corpus),
        "-c",
        "c",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(tmp_path / "d"),
        "--buffer",
        "1",
        "--metadata-fields",
        "meta",
        *FAST,
    ]
    code, _, err = _run(capsys, *args, "--strict")
    assert code == 2 and "Traceback" not in err
    assert "bad.jsonl:3: malformed JSON" in err and "stopped by --strict" in err
    assert _ids(tmp_path / "d") == ["d0", "d1"]  # the lines before it are indexed
    code, s, _ = _run(capsys, *args, "--json")  # without --strict: goes on from there
    assert code == 0 and s["resumed"] and s["runs"] == 2 and s["read"] == 12 and s["documents"] == 7
    assert _ids(tmp_path / "d") == sorted(["d0", "d1", "d3", "d5", "d7", "d8", "d9"])


def test_csv_and_parquet_jobs(tmp_path, docs, tiny_model_dir, capsys):
    import csv

    with (tmp_path / "c.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "lang"])
        for d in docs[:30]:
            w.writerow([d["id"], d["text"], d["metadata"]["lang"]])
        w.writerow(["d30"])  # line 32: wrong column count
    common = ["-c", "c", "--model", str(tiny_model_dir), "--metadata-fields", "lang", "--json", *FAST]
    code, s, err = _run(capsys, "--corpus", str(tmp_path / "c.csv"), "--data-dir", str(tmp_path / "a"), *common)
    assert code == 0 and s["documents"] == 30 and s["skipped"]["malformed"] == 1
    assert "c.csv:32: expected 3 columns, got 1" in err
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": [d["id"] for d in docs[:30]],
            "text": [d["text"] for d in docs[:30]],
            "lang": [d["metadata"]["lang"] for d in docs[:30]],
        }
    )
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=8)
    code, s2, _ = _run(capsys, "--corpus", str(tmp_path / "c.parquet"), "--data-dir", str(tmp_path / "b"), *common)
    assert code == 0 and s2["documents"] == 30 and s2["vectors"] == s["vectors"]
    with Client.local(tmp_path / "a") as a, Client.local(tmp_path / "b") as b:
        ids = [d["id"] for d in docs[:30]]
        assert [(d.text, d.metadata) for d in a.get("c", ids)] == [(d.text, d.metadata) for d in b.get("c", ids)]


def test_clean_errors(tmp_path, docs, tiny_model_dir, capsys):
    corpus = write_beir(tmp_path / "corpus.jsonl", docs[:5])
    model = ["--model", str(tiny_model_dir)]
    cases = [
        (
            ["--corpus", str(tmp_path / "nope.jsonl"), "-c", "c", "--data-dir", str(tmp_path / "d")],
            "corpus file not found",
        ),
        (["--corpus", str(corpus), "-c", "c"], "needs --data-dir DIR"),
        (["--corpus", str(corpus), "--data-dir", str(tmp_path / "d")], "needs --collection"),
        (["--corpus", str(tmp_path), "-c", "c", "--data-dir", str(tmp_path / "d"), "--format", "csv"], "no column(s)"),
        (
            ["--corpus", str(corpus), "-c", "c", "--data-dir", str(tmp_path / "d"), "--model", "no-such-model"],
            "unknown model 'no-such-model'",
        ),
        (
            ["--corpus", str(corpus), "-c", "bad name", "--data-dir", str(tmp_path / "d"), *model],
            "invalid collection name",
        ),
        (["--corpus", str(corpus), "-c", "c", "--server", "127.0.0.1:1", "--ray"], "--ray writes a local --data-dir"),
        (["--corpus", str(corpus), "-c", "c", "--data-dir", str(tmp_path / "d"), "--buffer", "0"], "--buffer must be"),
        ([], "give --corpus PATH"),
        (
            ["--corpus", str(corpus), "-c", "c", "--data-dir", str(tmp_path / "d"), *model]
            + ["--index-setting", "max_segments=eight"],
            "index setting max_segments must be an integer >= 1, got 'eight'",
        ),
        (
            ["--corpus", str(corpus), "-c", "c", "--data-dir", str(tmp_path / "d"), *model]
            + ["--index-setting", "ncentroids=0"],
            "ncentroids must be an integer >= 1 or null",
        ),
    ]
    (tmp_path / "notes.txt").write_text("x")
    cases.append(
        (
            ["--corpus", str(tmp_path / "notes.txt"), "-c", "c", "--data-dir", str(tmp_path / "d")],
            "unknown corpus format",
        )
    )
    for args, needle in cases:
        code, _, err = _run(capsys, *args)
        assert code == 2, args
        assert needle in err and "Traceback" not in err, (args, err)
    # an existing collection with another model
    assert _run(capsys, "--corpus", str(corpus), "-c", "c", "--data-dir", str(tmp_path / "e"), *model, *FAST)[0] == 0
    code, _, err = _run(
        capsys, "--corpus", str(corpus), "-c", "c", "--data-dir", str(tmp_path / "e"), "--model", "default"
    )
    assert code == 2 and "exists with model" in err
    # a --state file of another job
    code, _, err = _run(
        capsys,
        "--corpus",
        str(corpus),
        "-c",
        "c2",
        "--data-dir",
        str(tmp_path / "e"),
        *model,
        "--state",
        str(next((tmp_path / "e" / "jobs").iterdir())),
        *FAST,
    )
    assert code == 2 and "checkpoint of another job" in err


def test_existing_subcommands_still_work(tmp_path, docs, tiny_model_dir, capsys):
    corpus = write_beir(tmp_path / "corpus.jsonl", docs[:20])
    assert (
        main(["index", "build", "--data", str(corpus), "--model", str(tiny_model_dir), "--out", str(tmp_path / "idx")])
        == 0
    )
    capsys.readouterr()
    assert main(["index", "info", str(tmp_path / "idx")]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 20


def test_engine_upsert_with_given_vectors(tmp_path, docs, tiny_model_dir):
    """The engine API the job writes through: vectors in, only new and changed texts indexed from them."""
    from tessera.client.errors import InvalidArgument
    from tessera.service.engine import Engine

    enc = load_encoder(str(tiny_model_dir))
    batch = [(d["id"], d["text"], d["metadata"]) for d in docs[:6]]
    packed = enc.encode_documents([d[1] for d in batch], progress=False)
    with Engine(tmp_path / "e") as e:
        e.create_collection("c", str(tiny_model_dir), index_settings={"keep_vectors": True})
        r = e.upsert("c", batch, vectors=packed)
        assert (r.inserted, r.updated, r.unchanged) == (6, 0, 0)
        assert e.describe_collection("c").vectors == int(packed.lengths.sum())
        changed = [batch[0], (batch[1][0], "a new text", {})]
        r = e.upsert("c", changed, vectors=enc.encode_documents([t for _, t, _ in changed], progress=False))
        assert (r.inserted, r.updated, r.unchanged) == (0, 1, 1)
        hit = e.rerank("c", "a new text", ids=[batch[1][0]])[0]
        ref = enc.encode_documents(["a new text"], progress=False)
        q = enc.encode_queries(["a new text"])[0]
        assert hit.score == pytest.approx((q @ ref.vectors.float().T).max(dim=1).values.sum().item(), abs=1e-2)
        with pytest.raises(InvalidArgument, match="holds 6 documents for 2 documents"):
            e.upsert("c", batch[:2], vectors=packed)
        wrong = type(packed)(packed.vectors[:, :8], packed.token_ids, packed.lengths)
        with pytest.raises(InvalidArgument, match="dimension 8 but the collection has 16"):
            e.upsert("c", batch, vectors=wrong)
        e.check_consistency("c")


def test_ray_missing_is_a_clean_error(tmp_path, docs, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    corpus = write_beir(tmp_path / "corpus.jsonl", docs[:3])
    code, _, err = _run(
        capsys,
        "--corpus",
        str(corpus),
        "-c",
        "c",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(tmp_path / "d"),
        "--ray",
        *FAST,
    )
    assert code == 2 and "--ray needs Ray Data: pip install 'tessera[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # checked before anything is created

