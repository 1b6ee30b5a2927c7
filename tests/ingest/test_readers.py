"""Corpus readers: the four formats agree, resuming from any position gives the rest of the file, bad
lines carry their line numbers, and Ray's shards cover the file exactly once."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch
from conftest import write_beir

from tessera.errors import DataError
from tessera.ingest.distributed import plan_shards
from tessera.ingest.readers import Bad, Position, Record, open_corpus


def _plain_jsonl(path, docs):
    with path.open("w") as fh:
        for d in docs:
            row = {"doc_id": d["id"], "head": d["text"].split()[0], "body": d["text"], **d["metadata"]}
            fh.write(json.dumps(row) + "\n")
    return path


def _csv(path, docs, delimiter=","):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(["doc_id", "body", "lang", "year"])
        for i, d in enumerate(docs):
            body = d["text"] if i % 7 else d["text"].replace(" ", "\n", 1) + ', with "quotes"'
            w.writerow([d["id"], body, d["metadata"]["lang"], d["metadata"]["year"]])
    return path


def _parquet(path, docs, row_group_size=25):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "doc_id": [d["id"] for d in docs],
            "body": [d["text"] for d in docs],
            "lang": [d["metadata"]["lang"] for d in docs],
            "year": [d["metadata"]["year"] for d in docs],
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _records(corpus, start=Position()):
    return list(corpus.records(start))


def test_formats_agree(tmp_path, docs):
    beir = open_corpus(write_beir(tmp_path / "corpus.jsonl", docs))
    assert beir.format == "beir"
    got = _records(beir)
    assert [r.id for r in got] == [d["id"] for d in docs]
    assert all(isinstance(r, Record) for r in got)
    assert got[0].text == docs[0]["text"] and got[0].metadata == docs[0]["metadata"]  # "title text" rejoined

    plain = open_corpus(
        _plain_jsonl(tmp_path / "plain.jsonl", docs), id_field="doc_id", text_fields="body", metadata_fields="lang,year"
    )
    assert plain.format == "jsonl"
    got = _records(plain)
    assert [(r.id, r.text) for r in got] == [(d["id"], d["text"]) for d in docs]
    assert got[5].metadata == {"lang": docs[5]["metadata"]["lang"], "year": docs[5]["metadata"]["year"]}
    everything = _records(
        open_corpus(tmp_path / "plain.jsonl", id_field="doc_id", text_fields="body", metadata_fields="*")
    )
    assert set(everything[0].metadata) == {"head", "year", "lang", "even", "score", "src"}
    joined = _records(open_corpus(tmp_path / "plain.jsonl", id_field="doc_id", text_fields="head,body"))
    assert joined[1].text == docs[1]["text"].split()[0] + " " + docs[1]["text"]

    rows = _records(
        open_corpus(_csv(tmp_path / "c.csv", docs), id_field="doc_id", text_fields="body", metadata_fields="lang,year")
    )
    assert [r.id for r in rows] == [d["id"] for d in docs]
    assert rows[0].text.startswith(docs[0]["text"].split()[0] + "\n") and rows[0].text.endswith('"quotes"')
    assert rows[1].text == docs[1]["text"] and rows[1].metadata == {
        "lang": docs[1]["metadata"]["lang"],
        "year": str(docs[1]["metadata"]["year"]),
    }
    assert [r.line for r in rows[:3]] == [2, 4, 5]  # the first record spans lines 2-3
    tsv = _records(open_corpus(_csv(tmp_path / "c.tsv", docs, "\t"), id_field="doc_id", text_fields="body"))
    assert [r.text for r in tsv] == [r.text for r in rows]


def test_parquet(tmp_path, docs):
    corpus = open_corpus(
        _parquet(tmp_path / "c.parquet", docs), id_field="doc_id", text_fields="body", metadata_fields="year"
    )
    assert corpus.unit == "row" and corpus.size == len(docs)
    got = _records(corpus)
    assert [(r.id, r.text, r.metadata["year"], r.line) for r in got] == [
        (d["id"], d["text"], d["metadata"]["year"], i + 1) for i, d in enumerate(docs)
    ]


@pytest.mark.parametrize("fmt", ["beir", "csv", "parquet"])
def test_resume_from_any_position_gives_the_rest(tmp_path, docs, fmt):
    if fmt == "beir":
        corpus = open_corpus(write_beir(tmp_path / "corpus.jsonl", docs[:40]))
    elif fmt == "csv":
        corpus = open_corpus(_csv(tmp_path / "c.csv", docs[:40]), id_field="doc_id", text_fields="body")
    else:
        corpus = open_corpus(_parquet(tmp_path / "c.parquet", docs[:40], 7), id_field="doc_id", text_fields="body")
    full = _records(corpus)
    assert len(full) == 40
    for i in range(0, 40, 3):
        tail = _records(corpus, full[i].end)
        assert [(r.id, r.text, r.line) for r in tail] == [(r.id, r.text, r.line) for r in full[i + 1 :]]


def test_bad_lines_are_reported_with_their_numbers(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "fine"}),
        '{"id": "b", "text": "unterminated',
        "",
        "[1, 2]",
        json.dumps({"text": "no id"}),
        json.dumps({"id": "c", "text": 5}),
        json.dumps({"id": "d"}),
        json.dumps({"id": True, "text": "bool id"}),
        json.dumps({"id": 7, "text": "integer id"}),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "e", "text": "\xff"}\n')
    got = _records(open_corpus(path))
    kinds = [(type(r).__name__, r.line) for r in got]
    assert kinds == [
        ("Record", 1),
        ("Bad", 2),
        ("Bad", 4),
        ("Bad", 5),
        ("Bad", 6),
        ("Bad", 7),
        ("Bad", 8),
        ("Record", 9),
        ("Bad", 10),
    ]
    messages = [r.message for r in got if isinstance(r, Bad)]
    assert messages[0].startswith("bad.jsonl:2: malformed JSON")
    assert "bad.jsonl:4: expected a JSON object, got list" in messages
    assert "bad.jsonl:5: missing id field 'id'" in messages
    assert "bad.jsonl:6: field 'text' must be a string, got int" in messages
    assert "bad.jsonl:7: document 'd' has no 'text' field" in messages
    assert "bad.jsonl:10: not valid UTF-8" in messages
    assert got[7].id == "7"

    short = tmp_path / "short.csv"
    short.write_text('id,text\n1,"a"b\n2\n3,three\n4,"four\nlines\n5,five\n')
    rows = _records(open_corpus(short))
    assert [(type(r).__name__, r.line) for r in rows] == [("Bad", 2), ("Bad", 3), ("Record", 4), ("Bad", 5)]
    assert rows[0].message.startswith("short.csv:2: malformed CSV")
    assert rows[1].message == "short.csv:3: expected 2 columns, got 1"
    assert rows[3].message == "short.csv:5: malformed CSV (unexpected end of data)"


def test_shards_cover_the_file_exactly_once(tmp_path, docs):
    corpus = open_corpus(write_beir(tmp_path / "corpus.jsonl", docs))
    full = _records(corpus)
    for start in (Position(), full[17].end):
        shards = plan_shards(corpus, start, shard_bytes=1500)
        assert len(shards) > 5
        parts = [
            r
            for s in shards
            for r in corpus.records(Position(s["offset"], s["line"]), None if s["stop"] < 0 else s["stop"])
        ]
        expected = full if start.offset == 0 else full[18:]
        assert [(r.id, r.line, r.end) for r in parts] == [(r.id, r.line, r.end) for r in expected]
    assert len(plan_shards(corpus, Position(), shard_bytes=1 << 30)) == 1


def test_parquet_shards_are_row_groups(tmp_path, docs):
    corpus = open_corpus(_parquet(tmp_path / "c.parquet", docs, 25), id_field="doc_id", text_fields="body")
    shards = plan_shards(corpus, Position(30, 30), 1)
    assert [(s["offset"], s["stop"]) for s in shards] == [(30, 50), (50, 75), (75, 100), (100, 120)]
    parts = [r.id for s in shards for r in corpus.records(Position(s["offset"], s["line"]), s["stop"])]
    assert parts == [d["id"] for d in docs[30:]]


def test_open_errors(tmp_path, docs, monkeypatch):
    with pytest.raises(DataError, match="corpus file not found"):
        open_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(DataError, match="unknown corpus format"):
        open_corpus(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="unknown format 'xml'"):
        open_corpus(tmp_path / "notes.txt", "xml")
    _csv(tmp_path / "c.csv", docs[:3])
    with pytest.raises(DataError, match=r"no column\(s\) 'id', 'text' \(columns: doc_id, body, lang, year\)"):
        open_corpus(tmp_path / "c.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty CSV file"):
        open_corpus(tmp_path / "empty.csv")
    write_beir(tmp_path / "corpus.jsonl", docs[:3])
    assert open_corpus(tmp_path).format == "beir"  # a BEIR folder
    with pytest.raises(DataError, match="fixed fields"):
        open_corpus(tmp_path / "corpus.jsonl", "beir", id_field="x")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(DataError, match=r"Parquet needs pyarrow: pip install 'tessera\[parquet\]'"):
        open_corpus(tmp_path / "x.parquet")
    monkeypatch.undo()
    pytest.importorskip("pyarrow.parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        open_corpus(tmp_path / "x.parquet")


def test_ray_rows_carry_the_models_vectors(tmp_path, docs, tiny_model_dir):
    """The Ray stages' code, run here without Ray: shard reader -> encoder actor -> records -> vectors."""
    pytest.importorskip("pyarrow")
    import numpy as np

    from tessera.ingest.distributed import _EncodeActor, _read_shards, _records
    from tessera.ingest.sinks import packed_from_rows
    from tessera.training.checkpoints import load_encoder

    path = write_beir(tmp_path / "corpus.jsonl", docs[:30])
    path.write_text(path.read_text() + "{bad\n" + json.dumps({"_id": "p", "title": "", "text": "!!"}) + "\n")
    corpus = open_corpus(path)
    shards = plan_shards(corpus, Position(), 1000)
    batch = {k: np.array([s[k] for s in shards]) for k in ("offset", "line", "stop")}
    actor = _EncodeActor(str(tiny_model_dir), "cpu", 1, 8)
    items = [item for table in _read_shards(batch, corpus, rows_per_block=7) for item in _records(actor(table))]
    assert [getattr(i, "id", None) for i in items] == [d["id"] for d in docs[:30]] + [None, "p"]
    assert isinstance(items[30], Bad) and items[30].line == 31
    records = [i for i in items if isinstance(i, Record)]
    packed = packed_from_rows([r.vectors for r in records], 16)
    ref = load_encoder(str(tiny_model_dir)).encode_documents([r.text for r in records], progress=False)
    assert packed.lengths.tolist() == ref.lengths.tolist()
    assert torch.allclose(packed.vectors.float(), ref.vectors.float(), atol=2e-3)
    assert torch.equal(packed.token_ids, ref.token_ids)
