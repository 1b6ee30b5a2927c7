"""`tessera index --ray`: Ray Data reads, an actor pool encodes; the collection equals the one the
plain job builds (ids, texts, metadata, vectors, counts), and a stopped Ray job resumes."""

from __future__ import annotations

import json

import pytest
from conftest import write_beir

from tessera.cli import main
from tessera.client import Client

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tessera[ray]'")
pytest.importorskip("ray.data")

pytestmark = pytest.mark.slow  # a local Ray and its workers take 20-60 s to start on 2 cores

FAST = ["--index-setting", "auto_retrain=false", "--index-setting", "keep_vectors=true", "--no-progress", "--json"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (the job uses a running Ray and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _corpus(path, docs):
    write_beir(path, docs)
    lines = path.read_text().splitlines()
    lines.insert(10, "{not json")  # line 11
    lines.insert(20, lines[3])  # line 21: a duplicate id
    lines.insert(30, json.dumps({"_id": "blank", "title": "", "text": " "}))  # line 31
    path.write_text("\n".join(lines) + "\n")
    return path


def _job(capsys, *args) -> tuple[int, dict | None, str]:
    code = main(["index", *args])
    out = capsys.readouterr()
    return code, (json.loads(out.out.strip().splitlines()[-1]) if code == 0 else None), out.err


def test_ray_equals_the_plain_job(tmp_path, docs, tiny_model_dir, local_ray, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl", docs)
    common = ["--corpus", str(corpus), "-c", "c", "--model", str(tiny_model_dir), "--buffer", "40", *FAST]
    code, plain, _ = _job(capsys, *common, "--data-dir", str(tmp_path / "plain"))
    assert code == 0
    code, viaray, err = _job(
        capsys,
        *common,
        "--data-dir",
        str(tmp_path / "ray"),
        "--ray",
        "--ray-actors",
        "2",
        "--ray-shard-mb",
        "0.005",
        "--encode-batch",
        "8",
    )
    assert code == 0, err
    for key in ("read", "documents", "inserted", "vectors", "truncated", "skipped", "text_bytes", "bytes"):
        assert viaray[key] == plain[key], key
    assert plain["skipped"] == {"malformed": 1, "empty": 1, "duplicate": 1, "too_large": 0}
    assert "corpus.jsonl:11: malformed JSON" in err and "corpus.jsonl:21: duplicate id 'd3'" in err
    ids = [d["id"] for d in docs]
    with Client.local(tmp_path / "plain") as a, Client.local(tmp_path / "ray") as b:
        b._engine.check_consistency("c")
        assert [(d.id, d.text, d.metadata) for d in a.get("c", ids)] == [
            (d.id, d.text, d.metadata) for d in b.get("c", ids)
        ]
        for query in ("protein expression in cancer", "dog and cat"):
            ha, hb = a.rerank("c", query, ids=ids), b.rerank("c", query, ids=ids)  # exact MaxSim, fp16 originals
            assert [h.id for h in ha][:10] == [h.id for h in hb][:10]
            for x, y in zip(sorted(ha, key=lambda h: h.id), sorted(hb, key=lambda h: h.id), strict=True):
                assert x.score == pytest.approx(y.score, abs=1e-2)


def test_ray_job_resumes(tmp_path, docs, tiny_model_dir, local_ray, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl", docs)
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
        "4",
        "--ray",
        "--ray-actors",
        "1",
        "--ray-shard-mb",
        "0.005",
        *FAST,
    ]
    code, _, err = _job(capsys, *args, "--strict")
    assert code == 2 and "corpus.jsonl:11: malformed JSON" in err and "Traceback" not in err
    with Client.local(tmp_path / "d") as c:
        assert c.describe_collection("c").documents == 10  # the 10 lines before it
    code, s, _ = _job(capsys, *args)
    assert code == 0 and s["resumed"] and s["documents"] == len(docs) and s["runs"] == 2
    with Client.local(tmp_path / "d") as c:
        c._engine.check_consistency("c")
        assert sorted(d.id for d in c.get("c", [d["id"] for d in docs])) == sorted(d["id"] for d in docs)
