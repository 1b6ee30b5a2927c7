"""On-disk primitives: immutable array files with checksums, and the JSON manifest.

Every file is written to a temporary name in the same folder, fsynced, renamed into place and the
folder fsynced, so a crash leaves either the old file or the complete new one. Array files are
memory-mapped when read (copy-on-write, so torch can wrap them without copying).

Array file layout: 8-byte magic, 8-byte little-endian header length, a JSON header
``{"meta": {...}, "arrays": {name: {"dtype", "shape", "offset"}}}``, then each array 64-byte aligned.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from pathlib import Path

import numpy as np

from tessera.index.errors import IndexCorruptError, IndexNotFoundError, IndexVersionError

MAGIC = b"TSRARR01"
ALIGN = 64
MANIFEST = "manifest.json"
FORMAT = "tessera-index"
FORMAT_VERSION = 2  # 2: product-quantised residuals (quantizer "pq"); other indexes are written as ...
BASE_FORMAT_VERSION = 1  # ... version 1, which earlier Tessera versions read
_CHUNK = 1 << 22


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def atomic_write_bytes(path: Path, chunks) -> tuple[int, str]:
    """Write byte chunks to ``path`` atomically; returns (size, sha256 hex)."""
    tmp = _tmp_name(path)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                mv = memoryview(chunk).cast("B")
                digest.update(mv)
                f.write(mv)
                size += len(mv)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return size, digest.hexdigest()


def write_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> dict:
    """Write named arrays (plus JSON-able ``meta``) to one file; returns its manifest entry."""
    entries = {}
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    offset = 0
    for name, arr in arrays.items():
        entries[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        offset += -(-arr.nbytes // ALIGN) * ALIGN
    header = json.dumps({"meta": meta or {}, "arrays": entries}).encode()
    start = -(-(len(MAGIC) + 8 + len(header)) // ALIGN) * ALIGN
    pad_header = start - (len(MAGIC) + 8 + len(header))

    def chunks():
        yield MAGIC + struct.pack("<Q", len(header)) + header + b"\0" * pad_header
        for arr in arrays.values():
            flat = arr.reshape(-1).view(np.uint8)
            for i in range(0, flat.size, _CHUNK):
                yield flat[i : i + _CHUNK]
            pad = -arr.nbytes % ALIGN
            if pad:
                yield b"\0" * pad

    size, sha = atomic_write_bytes(path, chunks())
    return {"file": path.name, "size": size, "sha256": sha}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(folder: Path, entry: dict, verify: bool = True) -> Path:
    """Raise IndexCorruptError naming the file if it is missing, truncated or fails its checksum."""
    path = folder / entry["file"]
    if not path.is_file():
        raise IndexCorruptError(f"index file {entry['file']} is missing from {folder}")
    size = path.stat().st_size
    if size != entry["size"]:
        kind = "truncated" if size < entry["size"] else "has unexpected extra bytes"
        raise IndexCorruptError(
            f"index file {entry['file']} is {kind} ({size} bytes, expected {entry['size']})"
        )
    if verify and sha256_file(path) != entry["sha256"]:
        raise IndexCorruptError(f"index file {entry['file']} is corrupt (checksum mismatch)")
    return path


def read_arrays(folder: Path, entry: dict, verify: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Memory-map an array file after checking it against its manifest entry."""
    path = check_file(folder, entry, verify)
    name = entry["file"]
    try:
        mm = np.memmap(path, mode="c", dtype=np.uint8)
        if bytes(mm[: len(MAGIC)]) != MAGIC:
            raise ValueError("bad magic number")
        (hlen,) = struct.unpack("<Q", bytes(mm[len(MAGIC) : len(MAGIC) + 8]))
        header = json.loads(bytes(mm[len(MAGIC) + 8 : len(MAGIC) + 8 + hlen]))
        start = -(-(len(MAGIC) + 8 + hlen) // ALIGN) * ALIGN
        out = {}
        for key, spec in header["arrays"].items():
            dtype = np.dtype(spec["dtype"])
            shape = tuple(spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            lo = start + spec["offset"]
            hi = lo + count * dtype.itemsize
            if hi > mm.size:
                raise ValueError(f"array {key} runs past the end of the file")
            out[key] = mm[lo:hi].view(dtype).reshape(shape)
        return header["meta"], out
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise IndexCorruptError(f"index file {name} is corrupt ({exc})") from None


def _manifest_digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(folder: Path, body: dict, version: int = FORMAT_VERSION) -> None:
    """Atomically replace the manifest (the commit point of every change); ``version`` is the lowest
    format version that can read the index."""
    doc = {"format": FORMAT, "format_version": version, **body}
    doc["checksum"] = _manifest_digest(doc)
    data = json.dumps(doc, indent=1, sort_keys=True).encode()
    atomic_write_bytes(folder / MANIFEST, [data])


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise IndexNotFoundError(f"no index at {folder}: the folder does not exist")
    if not path.is_file():
        raise IndexNotFoundError(f"no index at {folder}: {MANIFEST} is missing")
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(f"index file {MANIFEST} in {folder} is corrupt ({exc})") from None
    if doc.get("format") != FORMAT:
        raise IndexCorruptError(f"{path} is not a Tessera index manifest (format {doc.get('format')!r})")
    version = doc.get("format_version")
    if not isinstance(version, int):
        raise IndexCorruptError(f"index file {MANIFEST} in {folder} has no format_version")
    if version > FORMAT_VERSION:
        raise IndexVersionError(
            f"index at {folder} has format version {version}, newer than the supported version "
            f"{FORMAT_VERSION}; upgrade Tessera to open it"
        )
    checksum = doc.pop("checksum", None)
    if checksum != _manifest_digest(doc):
        raise IndexCorruptError(f"index file {MANIFEST} in {folder} is corrupt (checksum mismatch)")
    return doc
