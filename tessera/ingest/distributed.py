"""Encoding on Ray (``tessera index --ray [ADDRESS]``): Ray Data reads the corpus in shards, a pool of
encoder actors (one per GPU, else one per ``actor_cpus`` CPUs) turns texts into token vectors, and the
job's driver writes them into the collection's index in input order (Ray Data's ``preserve_order``),
so checkpoints, duplicate detection and ``--strict`` behave exactly as without Ray.

Shards: byte ranges of JSON-lines files cut at line starts (their first line numbers counted by the
driver), one per Parquet row group, and a single one for CSV (a quoted field may span lines). Every
node must be able to read the corpus path (a shared file system) and load the model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

from tessera.errors import DataError, TesseraError
from tessera.ingest.readers import Bad, Corpus, Position, Record

log = logging.getLogger(__name__)

_READ_SCHEMA = (
    ("ok", "bool_"),
    ("id", "string"),
    ("text", "string"),
    ("metadata", "string"),
    ("line", "int64"),
    ("end_offset", "int64"),
    ("end_line", "int64"),
    ("message", "string"),
)


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DataError("--ray needs Ray Data: pip install 'tessera[ray]' (or pip install 'ray[data]')") from None
    return ray


def plan_shards(corpus: Corpus, start: Position, shard_bytes: int) -> list[dict]:
    """Shards from ``start`` to the end: [{"offset", "line", "stop"}] (stop -1: to the end)."""
    if corpus.format == "csv":
        return [{"offset": start.offset, "line": start.line, "stop": -1}]
    if corpus.format == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(corpus.path).metadata
        shards, row = [], 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if row + n > start.offset:
                first = max(row, start.offset)
                shards.append({"offset": first, "line": first, "stop": row + n})
            row += n
        return shards
    shards = []
    offset, line = start.offset, start.line
    shard_start, shard_line = offset, line
    with corpus.path.open("rb") as fh:
        fh.seek(offset)
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            if offset + len(chunk) - shard_start < shard_bytes:
                offset += len(chunk)
                line += chunk.count(b"\n")
                continue
            cut = max(0, shard_start + shard_bytes - offset)  # first byte at or past the target size
            nl = chunk.find(b"\n", cut)
            if nl < 0:
                offset += len(chunk)
                line += chunk.count(b"\n")
                continue
            line += chunk.count(b"\n", 0, nl + 1)
            boundary = offset + nl + 1
            shards.append({"offset": shard_start, "line": shard_line, "stop": boundary})
            shard_start, shard_line = boundary, line
            fh.seek(boundary)
            offset = boundary
    if shard_start < corpus.size or not shards:
        shards.append({"offset": shard_start, "line": shard_line, "stop": -1})
    return shards


def _read_shards(batch: dict, corpus: Corpus, rows_per_block: int) -> Iterator:
    """Ray Data map: shard descriptions -> blocks of ``rows_per_block`` rows, one per record (bad lines
    included, flagged), so that the encoder actors share even a single shard."""
    import pyarrow as pa

    schema = pa.schema([(n, getattr(pa, t)()) for n, t in _READ_SCHEMA])
    cols: dict[str, list] = {name: [] for name, _ in _READ_SCHEMA}
    for offset, line, stop in zip(batch["offset"], batch["line"], batch["stop"], strict=True):
        for item in corpus.records(Position(int(offset), int(line)), None if stop < 0 else int(stop)):
            ok = isinstance(item, Record)
            cols["ok"].append(ok)
            cols["id"].append(item.id if ok else "")
            cols["text"].append(item.text if ok else "")
            cols["metadata"].append(json.dumps(item.metadata, default=str) if ok else "")
            cols["line"].append(item.line)
            cols["end_offset"].append(item.end.offset)
            cols["end_line"].append(item.end.line)
            cols["message"].append("" if ok else item.message)
            if len(cols["ok"]) >= rows_per_block:
                yield pa.table(cols, schema=schema)
                cols = {name: [] for name, _ in _READ_SCHEMA}
    if cols["ok"]:
        yield pa.table(cols, schema=schema)


class _EncodeActor:
    """Ray Data actor: loads the model once, adds vectors, token ids and a truncation flag to each row."""

    def __init__(self, model: str, device: str, threads: int, batch_size: int, backend: str = "torch") -> None:
        import torch

        from tessera.ingest.encoding import load_document_encoder

        if device == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        self.encoder = load_document_encoder(model, device, batch_size, backend, threads if device == "cpu" else None)

    def __call__(self, table):
        import pyarrow as pa
        import torch

        ok = table.column("ok").to_pylist()
        texts = table.column("text").to_pylist()
        rows = [i for i, good in enumerate(ok) if good and texts[i].strip()]
        vecs: list[bytes] = [b""] * len(ok)
        toks: list[bytes] = [b""] * len(ok)
        trunc = [False] * len(ok)
        if rows:
            batch = [texts[i] for i in rows]
            packed = self.encoder.encode(batch)
            flags = self.encoder.truncated(batch)
            off = packed.offsets.tolist()
            v = packed.vectors.to("cpu", dtype=torch.float16).contiguous().numpy()
            t = packed.token_ids.to("cpu").contiguous().numpy()
            for j, i in enumerate(rows):
                vecs[i] = v[off[j] : off[j + 1]].tobytes()
                toks[i] = t[off[j] : off[j + 1]].tobytes()
                trunc[i] = flags[j]
        table = table.append_column("vectors", pa.array(vecs, pa.binary()))
        table = table.append_column("token_ids", pa.array(toks, pa.binary()))
        return table.append_column("truncated", pa.array(trunc, pa.bool_()))


def ray_records(
    corpus: Corpus,
    start: Position,
    *,
    model: str,
    address: str | None = None,
    actors: int | None = None,
    actor_cpus: float = 1.0,
    encode_batch: int = 32,
    shard_bytes: int = 64 << 20,
    device: str | None = None,
    backend: str = "torch",
) -> Iterator[Record | Bad]:
    """The corpus from ``start`` as records carrying their encodings, in file order."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        try:
            ray.init(address=None if address in (None, "", "local") else address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception for a start-up timeout
            where = "a new local Ray" if address in (None, "", "local") else f"Ray at {address}"
            raise TesseraError(f"cannot start or reach {where}: {exc}") from None
        started = True
    try:
        yield from _run(ray, corpus, start, model, actors, actor_cpus, encode_batch, shard_bytes, device, backend)
    finally:
        if started:
            ray.shutdown()


def _run(ray, corpus, start, model, actors, actor_cpus, encode_batch, shard_bytes, device, backend):
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if actors is None:
        actors = gpus or max(1, int(resources.get("CPU", 1) // actor_cpus))
    device = device or ("cuda" if gpus else "cpu")
    threads = max(1, int(actor_cpus))
    shards = plan_shards(corpus, start, shard_bytes)
    log.info(
        "Ray: %d shard(s), %d encoder actor(s) (%s), cluster %s",
        len(shards),
        actors,
        "1 GPU each" if gpus else f"{actor_cpus:g} CPU each",
        {k: v for k, v in resources.items() if k in ("CPU", "GPU")},
    )
    ds = ray.data.from_items(shards, override_num_blocks=len(shards))
    block = max(64, 8 * encode_batch)
    ds = ds.map_batches(
        _read_shards,
        fn_kwargs={"corpus": corpus, "rows_per_block": block},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0,
    )
    ds = ds.map_batches(
        _EncodeActor,
        fn_constructor_args=(model, device, threads, encode_batch, backend),
        batch_size=block,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        num_gpus=1 if gpus else 0,
    )
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from _records(table)
    except ray.exceptions.RayError as exc:
        raise TesseraError(f"the Ray pipeline failed: {_root_cause(exc)}") from None


def _records(table) -> Iterator[Record | Bad]:
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    for i in range(table.num_rows):
        end = Position(cols["end_offset"][i], cols["end_line"][i])
        if not cols["ok"][i]:
            yield Bad(cols["line"][i], cols["message"][i], end)
            continue
        yield Record(
            cols["id"][i],
            cols["text"][i],
            json.loads(cols["metadata"][i]),
            cols["line"][i],
            end,
            vectors=(cols["vectors"][i], cols["token_ids"][i]),
            truncated=cols["truncated"][i],
        )


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception)): (.*)$")


def _root_cause(exc: BaseException) -> str:
    """The user-code error inside a Ray error's text (e.g. ``ModelError: unknown model ...``)."""
    for line in str(exc).splitlines():
        m = _ERROR_LINE.match(line.strip())
        if m and not m.group(1).startswith("ray."):
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(3)}"
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
