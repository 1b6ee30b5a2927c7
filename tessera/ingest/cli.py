"""``tessera index --corpus PATH --collection NAME (--data-dir DIR | --server HOST:PORT)``: the batch job's
options (added to the ``index`` command by ``tessera.index.cli``) and its entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tessera.errors import DataError

JOB_DESCRIPTION = """\
With --corpus: the batch indexing job. It streams the corpus (BEIR corpus.jsonl, JSON lines, CSV or
Parquet; never loaded whole), encodes the documents in length-sorted buffers and upserts them by id into
a collection: in a local data directory (--data-dir; `tessera serve --data-dir DIR` serves it) or on a
running server (--server; the server encodes). The collection is created when missing.

Resumable: after every buffer the input position is checkpointed (--state; default DATA_DIR/jobs/ or
~/.cache/tessera/index-jobs/). Killed at any point and run again with the same arguments, the job goes on
from the last checkpoint; documents written since are upserted again by id (same text: not re-encoded),
so nothing is duplicated or missing. A complete job run again does nothing; a changed corpus file is
indexed again from the start (unchanged documents are not re-encoded; documents removed from the file
stay in the collection).

Bad input, counted in the summary and reported with its line (row) number: malformed lines (bad JSON or
UTF-8, wrong column count, missing id or text field, a text that is not a string) are skipped; empty
texts are skipped; a repeated id keeps its first occurrence (later ones are skipped); an id over 512
bytes, a text over 1 MB or metadata over 64 KB is skipped (too_large); a text longer than the model's
doc_maxlen tokens is indexed truncated (counted). --strict stops at the first line that would be skipped
(exit 2; everything before it is indexed).

Ray (--ray [ADDRESS]): Ray Data reads the corpus in shards, a pool of encoder actors (one per GPU, else
one per --ray-actor-cpus CPUs) encodes, and this process writes the index (needs --data-dir). Without
ADDRESS a local Ray is started; ADDRESS may be `auto` or a cluster address.

Other actions: `tessera index build|info|search` (a bare index folder, no collection).
"""


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    from tessera.training.runtime import add_backend_argument

    g = p.add_argument_group("batch indexing job (with --corpus)")
    g.add_argument("--corpus", type=Path, metavar="PATH", help="corpus file (or a BEIR folder holding corpus.jsonl)")
    g.add_argument("--collection", "-c", metavar="NAME", help="collection to write to (created when missing)")
    g.add_argument(
        "--model",
        metavar="SPEC",
        help="model of a new collection (default: 'default'); for an existing one it must be the collection's model",
    )
    where = g.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, metavar="DIR", help="write into this data directory (in-process)")
    where.add_argument("--server", metavar="HOST:PORT", help="write to a running `tessera serve` (bulk upsert)")
    g.add_argument("--db", default=None, metavar="URL", help="metadata store URL for --data-dir (default: SQLite)")
    g.add_argument(
        "--format",
        default="auto",
        choices=("auto", "beir", "jsonl", "csv", "parquet"),
        help="corpus format (auto: by file name; .jsonl whose first object has '_id' is BEIR)",
    )
    g.add_argument("--id-field", metavar="NAME", help="field (column) holding the id (default: id; BEIR: _id)")
    g.add_argument(
        "--text-field",
        metavar="NAMES",
        help="field(s) holding the text, comma-separated, joined by a space (default: text; BEIR: title,text)",
    )
    g.add_argument(
        "--metadata-fields",
        metavar="NAMES",
        help="fields kept as metadata, comma-separated, or '*' for all others (default: none; "
        "BEIR: its metadata object)",
    )
    g.add_argument("--delimiter", metavar="CHAR", help="CSV delimiter (default: ',' or a tab for .tsv)")
    g.add_argument(
        "--buffer",
        type=int,
        default=2048,
        metavar="N",
        help="documents sorted by length, encoded and committed together (one checkpoint)",
    )
    g.add_argument("--encode-batch", type=int, default=32, metavar="N", help="documents per encoder forward pass")
    g.add_argument("--upsert-batch", type=int, default=256, metavar="N", help="documents per message with --server")
    g.add_argument("--strict", action="store_true", help="stop at the first malformed or skipped line (exit 2)")
    g.add_argument("--state", type=Path, metavar="FILE", help="checkpoint file (default: one per job, see above)")
    g.add_argument("--restart", action="store_true", help="ignore the checkpoint and read the corpus from the start")
    g.add_argument("--json", action="store_true", help="print the summary as JSON (the last stdout line)")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on a terminal)",
    )
    g.add_argument(
        "--nbits", type=int, default=0, choices=(0, 1, 2, 4),
        help="bits per residual, new collection (0, the default: 4 for a CRISP model, else 2)",
    )
    g.add_argument("--ncentroids", type=int, help="number of centroids of a new collection's index")
    g.add_argument(
        "--index-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="index setting of a new collection (repeatable), e.g. quantizer=pq (see docs/indexing.md)",
    )
    g.add_argument("--device", default="cpu", help="torch device for encoding (cpu, cuda)")
    add_backend_argument(g, default="auto", what="document encoding with --data-dir or --ray")
    g.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's)")
    g.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"), help="with --server (or TESSERA_API_KEY)")
    g.add_argument("--tls", action="store_true", help="connect to --server with TLS")
    g.add_argument("--tls-ca", metavar="PEM", help="CA certificate to verify the server with")
    g.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    g.add_argument("--tls-key", metavar="PEM", help="client private key (mutual TLS)")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds for one buffer's bulk upsert")
    g.add_argument("--retries", type=int, default=5, help="times a buffer is re-sent after UNAVAILABLE and the like")
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="encode on Ray (a new local Ray without ADDRESS; 'auto' or HOST:PORT for a cluster)",
    )
    g.add_argument("--ray-actors", type=int, metavar="N", help="encoder actors (default: one per GPU or CPU slot)")
    g.add_argument("--ray-actor-cpus", type=float, default=1.0, metavar="N", help="CPUs (torch threads) per actor")
    g.add_argument("--ray-shard-mb", type=float, default=64.0, metavar="MB", help="corpus bytes per read task")


def _check(args: argparse.Namespace) -> None:
    if args.collection is None:
        raise DataError("--corpus needs --collection NAME")
    if args.data_dir is None and args.server is None:
        raise DataError("--corpus needs --data-dir DIR (a local data directory) or --server HOST:PORT")
    if args.ray and args.server:
        raise DataError("--ray writes a local --data-dir (with --server, the server encodes the texts)")
    for name in ("buffer", "encode_batch", "upsert_batch"):
        if getattr(args, name) <= 0:
            raise DataError(f"--{name.replace('_', '-')} must be positive")
    if args.ncentroids is not None and args.ncentroids <= 0:
        raise DataError("--ncentroids must be positive")


def run_job(args: argparse.Namespace) -> int:
    from tessera.ingest.job import Job, JobOptions, default_state_path, format_summary
    from tessera.ingest.readers import open_corpus
    from tessera.ingest.sinks import CollectionSettings, LocalSink, RemoteSink

    _check(args)
    if args.ray:
        from tessera.ingest.distributed import import_ray

        import_ray()  # before anything is created
    corpus = open_corpus(
        args.corpus,
        args.format,
        id_field=args.id_field,
        text_fields=args.text_field,
        metadata_fields=args.metadata_fields,
        delimiter=args.delimiter,
    )
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    index_settings = dict(_setting(s) for s in args.index_setting)
    if args.ncentroids:
        index_settings["ncentroids"] = args.ncentroids
    settings = CollectionSettings(args.model, args.nbits, index_settings or None)
    if args.server:
        sink = RemoteSink(
            args.server,
            args.collection,
            settings,
            api_key=args.api_key,
            tls=args.tls,
            root_certificates=args.tls_ca,
            client_certificate=args.tls_cert,
            client_key=args.tls_key,
            timeout=args.timeout,
            upsert_batch=args.upsert_batch,
            retries=args.retries,
        )
        root = _cache_dir() / "index-jobs"
    else:
        sink = LocalSink(
            args.data_dir,
            args.collection,
            settings,
            db_url=args.db,
            device=args.device,
            encode_batch=args.encode_batch,
            backend=args.backend,
            threads=args.torch_threads,
        )
        root = Path(sink.target) / "jobs"
    try:
        state = args.state or default_state_path(root, corpus, args.collection, f"{sink.kind}:{sink.target}")
        opts = JobOptions(corpus, args.collection, state, args.buffer, args.strict, args.restart, args.progress)
        items = corpus.records
        if args.ray:
            from functools import partial

            from tessera.ingest.distributed import ray_records

            items = partial(
                ray_records,
                corpus,
                model=sink.info.model,
                address=args.ray,
                actors=args.ray_actors,
                actor_cpus=args.ray_actor_cpus,
                encode_batch=args.encode_batch,
                shard_bytes=max(1, int(args.ray_shard_mb * (1 << 20))),
                device=None if args.device == "cpu" else args.device,
                backend=args.backend,
            )
        summary = Job(opts, sink, items).run()
        summary["encoder_backend"] = "ray: " + args.backend if args.ray else getattr(sink, "encoder_backend", None)
    finally:
        sink.close()
    if args.json:
        print(format_summary(summary), file=sys.stderr)
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0


def _setting(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise DataError(f"--index-setting {text!r}: use NAME=VALUE")
    if value.lower() in ("true", "false"):
        return name.strip(), value.lower() == "true"
    for cast in (int, float):
        try:
            return name.strip(), cast(value)
        except ValueError:
            pass
    return name.strip(), value


def _cache_dir() -> Path:
    env = os.environ.get("TESSERA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tessera"
