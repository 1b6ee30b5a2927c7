"""MultiVectorIndex: the public face of the index engine (see the package docstring and docs/indexing.md)."""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tessera.index import exact
from tessera.index.codec import QUANTIZERS, Cancelled, ResidualCodec, StopCheck
from tessera.index.errors import IndexCorruptError, IndexExistsError
from tessera.index.kernels import take
from tessera.index.segment import Segment
from tessera.index.snapshot import Snapshot
from tessera.index.storage import (
    BASE_FORMAT_VERSION,
    FORMAT_VERSION,
    MANIFEST,
    read_arrays,
    read_manifest,
    write_arrays,
    write_manifest,
)
from tessera.index.validation import (
    check_documents,
    check_ids,
    check_k,
    check_params,
    check_queries,
    check_settings,
)
from tessera.packed import PackedDocuments

log = logging.getLogger(__name__)

DEFAULT_SETTINGS: dict = {
    "ncentroids": None,  # None: 2^floor(log2(8 sqrt(vectors))) at first training (codec.default_ncentroids)
    "kmeans_niter": 8,
    "kmeans_points_per_centroid": 32,  # k-means sample size per centroid
    "seed": 0,
    "quantizer": "scalar",  # residual code: "scalar" (per-dimension buckets, ColBERTv2) or "pq" (same bytes)
    "max_k": 100_000,
    "max_segments": 8,  # at most this many segments after an add (the newest are merged)
    "merge_ratio": 2.0,  # after an add, the newest segments merge while the one before holds <= this x their vectors
    "keep_vectors": False,  # also store fp16 originals: exact reranking at +2*dim bytes per vector
    "originals_until": 1 << 18,  # ... and keep them anyway until the codec was trained on this many vectors
    "auto_retrain": True,  # re-train centroids in the background when the data drifts or grows
    "retrain_drift": 1.3,  # ... when new vectors' residual error exceeds this multiple of the training error
    "retrain_growth": 4.0,  # ... or the live vectors exceed this multiple of those the codec was trained on
}
SETTING_RULES: dict = {
    "ncentroids": (int, 1, None, True),
    "kmeans_niter": (int, 1),
    "kmeans_points_per_centroid": (int, 1),
    "seed": (int, 0, 2**31 - 1),  # faiss takes a C int
    "quantizer": QUANTIZERS,
    "max_k": (int, 1),
    "max_segments": (int, 1),
    "merge_ratio": (float, 0),
    "keep_vectors": bool,
    "originals_until": (int, 0),
    "auto_retrain": bool,
    "retrain_drift": (float, 1),
    "retrain_growth": (float, 1),
}
_OWN_FILE = re.compile(r"^(seg-\d+\.seg|seg-\d+\.del-\d+|codec-\d+\.codec|\..+\.tmp-[0-9a-f]+)$")


def merge_run(sizes: Sequence[int], ratio: float, max_segments: int) -> int:
    """Where the merge of the newest segments starts, given each segment's live vectors (oldest first):
    the run of newest segments grows while the segment before it holds at most ``ratio`` times the
    run's vectors, or while merging less would leave more than ``max_segments``. ``len(sizes) - 1``
    (or ``len(sizes)`` when empty) means no merge.

    Each merge at least about doubles a segment's size (``ratio`` >= 1), so segments shrink
    geometrically from oldest to newest: a vector is rewritten O(log n) times over n adds, and an
    index holds O(log n) segments; many small adds to a small index leave it in one segment."""
    j = len(sizes) - 1
    if j < 0:
        return 0
    run = sizes[j]
    while j > 0 and (sizes[j - 1] <= ratio * run or j >= max_segments):
        j -= 1
        run += sizes[j]
    return j


@dataclass(frozen=True)
class Hit:
    id: str
    score: float


def _methods() -> dict:
    from tessera.index import methods

    return methods.METHODS


class MultiVectorIndex:
    """Compressed multi-vector index with exact, PLAID, XTR and PRF search; see the module docs."""

    def __init__(
        self,
        path: Path | None,
        dim: int,
        nbits: int,
        device: str,
        settings: dict,
        snapshot: Snapshot,
        next_segment: int = 0,
        generation: int = 0,
        codec_entry: dict | None = None,
        tombstones: dict | None = None,
    ) -> None:
        self.path = path
        self.dim = dim
        self.nbits = nbits
        self.device = torch.device(device)
        self.settings = settings
        self._snap = snapshot
        self._lock = threading.RLock()
        self._next_segment = next_segment
        self._generation = generation
        self._codec_entry = codec_entry
        # segment name -> (alive mask object that was saved, its manifest entry or None)
        self._tombstones: dict[str, tuple[torch.Tensor, dict | None]] = tombstones or {}
        self._closed = False
        self._retrain_thread: threading.Thread | None = None
        self._stop_retrain = threading.Event()
        self.last_retrain_error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path | None, dim: int, *, nbits: int = 2, device: str = "cpu", **settings
    ) -> MultiVectorIndex:
        """A new empty index; ``path=None`` keeps it in memory only."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if nbits not in (1, 2, 4):
            raise ValueError(f"nbits must be 1, 2 or 4, got {nbits!r}")
        if dim % (8 // nbits):
            raise ValueError(f"dim {dim} must be a multiple of {8 // nbits} for {nbits}-bit codes")
        merged = {**DEFAULT_SETTINGS, **check_settings(settings, SETTING_RULES)}
        folder = None
        if path is not None:
            folder = Path(path)
            if (folder / MANIFEST).exists():
                raise IndexExistsError(f"an index already exists at {folder}; open it instead")
            if folder.exists() and any(folder.iterdir()):
                raise IndexExistsError(f"{folder} exists and is not empty; choose a new folder for the index")
            folder.mkdir(parents=True, exist_ok=True)
        index = cls(folder, dim, nbits, str(device), merged, Snapshot(None, (), (), {}))
        if folder is not None:
            index.flush()
        return index

    @classmethod
    def open(cls, path: str | Path, device: str = "cpu", *, verify: bool = True) -> MultiVectorIndex:
        """Open an index folder; every file is checked against the manifest (size, and sha256 if verify)."""
        folder = Path(path)
        man = read_manifest(folder)
        try:
            dim, nbits = int(man["dim"]), int(man["nbits"])
            settings = {**DEFAULT_SETTINGS, **man["settings"]}
            seg_entries = man["segments"]
            codec_entry = man["codec"]
            next_segment, generation = int(man["next_segment"]), int(man["generation"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"index file {MANIFEST} in {folder} is corrupt (missing {exc})") from None
        codec = None
        if codec_entry is not None:
            meta, arrays = read_arrays(folder, codec_entry, verify)
            codec = ResidualCodec.from_arrays(arrays, meta, device)
        segments, alive, tombstones = [], [], {}
        locations: dict[str, tuple[int, int]] = {}
        for s, entry in enumerate(seg_entries):
            seg = Segment.load(folder, entry["name"], entry["file"], verify).to(device)
            if seg.n_docs != entry["n_docs"] or seg.n_vectors != entry["n_vectors"]:
                raise IndexCorruptError(f"index file {entry['file']['file']} does not match the manifest")
            mask = torch.ones(seg.n_docs, dtype=torch.bool)
            tomb = entry.get("tombstones")
            if tomb is not None:
                _, t = read_arrays(folder, tomb, verify)
                deleted = torch.from_numpy(t["deleted"].astype("int64"))
                if deleted.numel() and (deleted.min() < 0 or deleted.max() >= seg.n_docs):
                    raise IndexCorruptError(f"index file {tomb['file']} has out-of-range document numbers")
                mask[deleted] = False
            tombstones[seg.name] = (mask, tomb)
            for i, doc_id in enumerate(seg.ids):
                if mask[i]:
                    locations[doc_id] = (s, i)
            segments.append(seg)
            alive.append(mask)
        snap = Snapshot(codec, tuple(segments), tuple(alive), locations, generation)
        return cls(
            folder, dim, nbits, str(device), settings, snap, next_segment, generation, codec_entry, tombstones
        )

    def close(self, cancel_maintenance: bool = False) -> None:
        """Wait for a background re-training to finish (so that its result is kept), flush, close.

        ``cancel_maintenance=True`` stops a running re-training at its next check point instead (within
        one k-means iteration or one block of 65k vectors) and keeps the current codec. An index that is
        never closed does not hold the interpreter up for long either: when the main thread ends, a
        running re-training stops at its next check point and nothing of it is kept (unflushed changes
        are lost in any case)."""
        if not self._closed:
            if cancel_maintenance:
                self._stop_retrain.set()
            self.wait_for_maintenance()
            if self.path is not None:
                self.flush()
            self._closed = True

    def __enter__(self) -> MultiVectorIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the index is closed")

    # -- reading ----------------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        """The current immutable snapshot (searches started now see exactly this)."""
        return self._snap

    def __len__(self) -> int:
        return len(self._snap.locations)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._snap.locations

    def ids(self) -> list[str]:
        return list(self._snap.locations)

    def stats(self) -> dict:
        snap = self._snap
        codec = snap.codec
        live_vectors = sum(snap.live_vectors)
        stored = sum(s.n_vectors for s in snap.segments)
        mem = sum(s.nbytes for s in snap.segments)
        full = sum(s.full_nbytes for s in snap.segments)
        disk = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file()) if self.path else 0
        per_vec = 4 + self.dim * self.nbits // 8
        drift = self._drift(snap)
        return {
            "documents": len(snap.locations),
            "vectors": live_vectors,
            "stored_vectors": stored,
            "tombstones": snap.total_docs - len(snap.locations),
            "segments": len(snap.segments),
            "dim": self.dim,
            "nbits": self.nbits,
            "quantizer": self.settings["quantizer"],
            "ncentroids": codec.ncentroids if codec else 0,
            "bytes_per_vector": per_vec,  # centroid id + packed residual
            "bytes_per_vector_in_memory": mem / stored if stored else float(per_vec),
            "bytes_per_vector_on_disk": disk / stored if stored and self.path else None,
            "memory_bytes": mem,
            "full_vector_bytes": full,  # fp16 originals (keep_vectors or originals_until), memory-mapped on disk
            "disk_bytes": disk,
            "residual_drift": drift,
            "codec_trained_on": codec.trained_on if codec else 0,
            "retraining": self._retrain_thread is not None,
            "generation": self._generation,
            "device": str(self.device),
            "path": str(self.path) if self.path else None,
        }

    def search(
        self,
        queries: torch.Tensor,
        k: int = 10,
        method: str = "plaid",
        params: dict | None = None,
        allowed_ids: Collection[str] | None = None,
    ) -> list[list[Hit]]:
        """Top-k documents per query (a [nq, Lq, dim] or [Lq, dim] float tensor)."""
        return self.search_with_stats(queries, k, method, params, allowed_ids)[0]

    def search_with_stats(
        self,
        queries: torch.Tensor,
        k: int = 10,
        method: str = "plaid",
        params: dict | None = None,
        allowed_ids: Collection[str] | None = None,
        query_weights: torch.Tensor | None = None,
    ) -> tuple[list[list[Hit]], dict]:
        """Like ``search``, also returning work counters of the method (candidates, dot products)."""
        self._check_open()
        methods = _methods()
        if method not in methods:
            raise ValueError(f"unknown search method {method!r} (known: {', '.join(methods)})")
        impl = methods[method]
        k = check_k(k, self.settings["max_k"])
        q = check_queries(queries, self.dim)
        params = check_params(method, params, impl.PARAMS)
        if allowed_ids is not None:
            allowed_ids = check_ids(
                allowed_ids if isinstance(allowed_ids, str) else list(allowed_ids), "allowed_ids"
            )
        if query_weights is not None:
            query_weights = torch.as_tensor(query_weights, dtype=torch.float32).reshape(
                q.shape[0], q.shape[1]
            )
        snap = self._snap
        stats: dict = {"method": method}
        if snap.codec is None or not snap.locations or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])], stats
        dev = snap.codec.device  # queries and weights on the index's device; the mask, like all global
        mask, q = snap.mask(allowed_ids), q.to(dev)  # document numbering, stays on the CPU
        if query_weights is not None:
            query_weights = query_weights.to(dev)
        scores, gidx = impl.search(snap, q, k, params, mask, query_weights=query_weights, stats=stats)
        return self._hits(snap, scores, gidx), stats

    @staticmethod
    def _hits(snap: Snapshot, scores: torch.Tensor, gidx: torch.Tensor) -> list[list[Hit]]:
        out = []
        scores, gidx = scores.cpu(), gidx.cpu()
        if gidx.numel():
            seg_of, local = snap.locate(gidx.clamp_min(0))
            seg_of, local = seg_of.tolist(), local.tolist()
        for r, (row_s, row_g) in enumerate(zip(scores.tolist(), gidx.tolist(), strict=True)):
            row = []
            for c, (s, g) in enumerate(zip(row_s, row_g, strict=True)):
                if g < 0 or s == float("-inf"):
                    break
                row.append(Hit(snap.segments[seg_of[r][c]].ids[local[r][c]], s))
            out.append(row)
        return out

    def score(self, query: torch.Tensor, ids: Sequence[str]) -> list[Hit]:
        """Exact MaxSim of one query against the given documents, best first (KeyError on unknown ids)."""
        self._check_open()
        q = check_queries(query, self.dim)
        if q.shape[0] != 1:
            raise ValueError(f"score() takes one query, got {q.shape[0]}")
        ids = list(dict.fromkeys(check_ids(ids)))
        snap = self._snap
        missing = [x for x in ids if x not in snap.locations]
        if missing:
            shown = ", ".join(repr(x) for x in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise KeyError(f"{len(missing)} unknown document id(s): {shown}")
        if not ids:
            return []
        gidx = snap.global_index(ids)
        scores = exact.score_docs(snap, q.to(snap.codec.device), gidx)[0]
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        return [Hit(ids[i], float(scores[i])) for i in order]

    def rerank(
        self, queries: torch.Tensor, candidates: Sequence[Sequence[str]], k: int | None = None
    ) -> list[list[Hit]]:
        """Second stage of a two-stage search: exact MaxSim of each query [nq, Lq, dim] against its own
        candidate ids (e.g. from a first-stage index), best first, at most ``k`` per query.

        Candidates no longer in the index (deleted since the first stage ran, or never added) are
        skipped, not an error: the first stage may be a separate system. Scores come from the stored
        fp16 originals when the index keeps them (``keep_vectors``), else from decompressed residuals.
        """
        self._check_open()
        q = check_queries(queries, self.dim)
        if len(candidates) != q.shape[0]:
            raise ValueError(f"{q.shape[0]} queries but {len(candidates)} candidate lists")
        if k is not None:
            k = check_k(k, self.settings["max_k"])
        snap = self._snap
        out = []
        for row, ids in enumerate(candidates):
            ids = [x for x in dict.fromkeys(check_ids(ids, "candidates")) if x in snap.locations]
            if not ids:
                out.append([])
                continue
            scores = exact.score_docs(snap, q[row : row + 1].to(snap.codec.device), snap.global_index(ids))[0]
            order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
            out.append([Hit(ids[i], float(scores[i])) for i in order])
        return out

    # -- writing ----------------------------------------------------------------------------------
    def _train_codec(self, docs: PackedDocuments, should_stop: StopCheck = None) -> ResidualCodec:
        """A codec trained on ``docs``; every m-th document (at most about 64k vectors, none when
        there are fewer than 8 documents) is kept out of k-means to measure the training error on."""
        s = self.settings
        n_docs, n_vectors = len(docs), docs.vectors.shape[0]
        holdout = None
        if n_docs >= 8:
            step = max(8, math.ceil(n_vectors / 65536))
            held = torch.zeros(n_docs, dtype=torch.bool)
            held[step // 2 :: step] = True
            holdout = torch.repeat_interleave(held, docs.lengths.cpu())
        return ResidualCodec.train(
            docs.vectors,
            self.nbits,
            s["ncentroids"],
            s["kmeans_niter"],
            s["kmeans_points_per_centroid"],
            s["seed"],
            self.device,
            should_stop,
            s["quantizer"],
            holdout,
        )

    def _new_segment_name(self) -> str:
        name = f"seg-{self._next_segment:06d}"
        self._next_segment += 1
        return name

    def add(self, ids: Sequence[str], docs: PackedDocuments) -> None:
        """Add documents; an id that already exists is replaced (upsert)."""
        self._check_open()
        if isinstance(docs, PackedDocuments):
            docs = docs.to("cpu")  # encoded on any device; segments are built on the CPU, then moved
        ids = check_documents(ids, docs, self.dim)
        if not ids:
            return
        with self._lock:
            snap = self._snap
            codec = snap.codec if snap.codec is not None else self._train_codec(docs)
            seg = Segment.build(self._new_segment_name(), ids, docs, codec, self._keeps_originals(codec))
            if seg.vectors is None and self._retrain_due(snap, codec, seg):
                # keep the originals until re-training, so that re-encoding them loses nothing
                seg.vectors = docs.vectors.to(torch.float16).contiguous()
            seg = seg.to(self.device)
            alive = list(snap.alive)
            locations = dict(snap.locations)
            self._tombstone(ids, alive, locations)
            n = len(snap.segments)
            for j, doc_id in enumerate(ids):
                locations[doc_id] = (n, j)
            self._publish(
                Snapshot(
                    codec,
                    (*snap.segments, seg),
                    (*alive, torch.ones(len(ids), dtype=torch.bool)),
                    locations,
                    self._generation,
                )
            )
            self._merge_newest()
            if self.settings["auto_retrain"] and self._needs_retrain():
                self.retrain(background=True)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; returns how many of them existed."""
        self._check_open()
        ids = check_ids(ids)
        with self._lock:
            snap = self._snap
            alive = list(snap.alive)
            locations = dict(snap.locations)
            count = self._tombstone(ids, alive, locations)
            if count:
                self._publish(Snapshot(snap.codec, snap.segments, tuple(alive), locations, self._generation))
            return count

    @staticmethod
    def _tombstone(ids: Sequence[str], alive: list[torch.Tensor], locations: dict) -> int:
        copied: set[int] = set()
        count = 0
        for doc_id in ids:
            loc = locations.pop(doc_id, None)
            if loc is None:
                continue
            s, i = loc
            if s not in copied:
                alive[s] = alive[s].clone()
                copied.add(s)
            alive[s][i] = False
            count += 1
        return count

    def _publish(self, snap: Snapshot) -> None:
        self._snap = snap  # a single reference assignment: atomic for readers

    def merge(self) -> None:
        """Compact all segments into one, dropping deleted documents."""
        self._check_open()
        with self._lock:
            self._merge(list(range(len(self._snap.segments))))

    def _merge_newest(self) -> None:
        """After an add: merge the newest segments as ``merge_run`` says, and drop segments whose
        documents are all deleted."""
        snap = self._snap
        live = snap.live_vectors
        start = merge_run(live, self.settings["merge_ratio"], self.settings["max_segments"])
        dead = [s for s in range(start) if not snap.alive[s].any()]  # dropped, nothing to rewrite
        run = list(range(start, len(live))) if start < len(live) - 1 else []
        if dead or run:
            self._merge(dead + run)

    def _merge(self, which: list[int]) -> None:
        snap = self._snap
        if snap.codec is None or not which:
            return
        which_set = set(which)
        parts = [(snap.segments[s], snap.alive[s].nonzero().flatten()) for s in sorted(which_set)]
        merged = Segment.from_parts(self._new_segment_name(), parts, snap.codec)
        kept = [s for s in range(len(snap.segments)) if s not in which_set]
        segments = [snap.segments[s] for s in kept]
        alive = [snap.alive[s] for s in kept]
        locations = dict(snap.locations)
        for new, old in enumerate(kept):  # only documents whose segment moved get new locations
            if new != old:
                for i in alive[new].nonzero().flatten().tolist():
                    locations[segments[new].ids[i]] = (new, i)
        if merged.n_docs:
            for i, doc_id in enumerate(merged.ids):
                locations[doc_id] = (len(segments), i)
            segments.append(merged)
            alive.append(torch.ones(merged.n_docs, dtype=torch.bool))
        self._publish(Snapshot(snap.codec, tuple(segments), tuple(alive), locations, self._generation))

    # -- re-training ------------------------------------------------------------------------------
    def _keeps_originals(self, codec: ResidualCodec) -> bool:
        """Do new segments encoded by ``codec`` keep their fp16 originals? With ``keep_vectors``, and
        while the codec was trained on fewer than ``originals_until`` vectors (with ``auto_retrain``):
        a re-training of a young index then trains and re-encodes from the real vectors."""
        s = self.settings
        return s["keep_vectors"] or (s["auto_retrain"] and codec.trained_on < s["originals_until"])

    def _grown(self, snap: Snapshot, codec: ResidualCodec, extra: int = 0) -> bool:
        """Has the index (plus ``extra`` vectors) outgrown its codec, and can it re-train without loss?
        Only when every segment with live documents keeps its originals: re-encoding decompressed
        vectors adds a second quantisation error (on SciFact, two such re-trainings over an ingest in
        batches of 256 documents cost 1.2 nDCG@10 points more than never re-training)."""
        live = sum(snap.live_vectors) + extra
        if live <= self.settings["retrain_growth"] * codec.trained_on:
            return False
        return all(seg.vectors is not None for seg, a in zip(snap.segments, snap.alive, strict=True) if a.any())

    def _needs_retrain(self) -> bool:
        snap = self._snap
        codec = snap.codec
        if codec is None or not codec.trained_on or self._retrain_thread is not None:
            return False
        drift = self._drift(snap) or 0.0
        return drift > self.settings["retrain_drift"] or self._grown(snap, codec)

    def _retrain_due(self, snap: Snapshot, codec: ResidualCodec, seg: Segment) -> bool:
        """Will adding ``seg`` make (or has it made) re-training necessary?"""
        if not self.settings["auto_retrain"] or not codec.trained_on:
            return False
        if self._retrain_thread is not None or snap.codec is None:
            return self._retrain_thread is not None
        drift = self._drift(snap, seg) or 0.0
        return drift > self.settings["retrain_drift"] or self._grown(snap, codec, seg.n_vectors)

    @staticmethod
    def _drift(snap: Snapshot, extra: Segment | None = None) -> float | None:
        """Mean residual error of the stored vectors (and ``extra``'s, about to be added) relative to
        the codec's training error."""
        segments = (*snap.segments, extra) if extra is not None else snap.segments
        stored = sum(s.n_vectors for s in segments)
        if snap.codec is None or snap.codec.train_error <= 0 or not stored:
            return None
        return sum(s.error * s.n_vectors for s in segments) / stored / snap.codec.train_error

    def retrain(self, background: bool = False) -> None:
        """Train new centroids and residual buckets on the live documents and re-encode everything.

        The work runs without blocking searches or writers; the result is swapped in atomically, and
        documents added, replaced or deleted meanwhile are carried over. ``background=True`` returns
        at once (``wait_for_maintenance`` joins it; ``close`` waits for it).

        A re-training changes search results: every stored vector gets new codes, so approximate
        methods (plaid, xtr, prf, and exact on an index without ``keep_vectors``) can return other
        documents or scores for the same query before and after the swap (usually better ones, as
        the codes then fit the data again). Searches see either the old snapshot or the new one,
        never a mix. With ``auto_retrain`` (the default) this can happen after any ``add``; set
        ``auto_retrain=False`` where results must stay reproducible between calls."""
        self._check_open()
        with self._lock:
            if self._retrain_thread is not None:
                if not background:
                    self.wait_for_maintenance()
                    return self.retrain()
                return
            if background:
                # not a daemon: the interpreter joins it at exit instead of killing it inside native
                # code (which aborts the process); _should_stop makes it end quickly then
                self._stop_retrain.clear()
                self._retrain_thread = threading.Thread(
                    target=self._retrain_guarded, name="tessera-retrain", daemon=False
                )
                self._retrain_thread.start()
                return
        self._retrain_work()

    def wait_for_maintenance(self) -> None:
        """Wait for a background re-training to finish (re-raising nothing; see last_retrain_error)."""
        thread = self._retrain_thread
        if thread is not None:
            thread.join()

    def _should_stop(self) -> bool:
        """Polled by a background re-training: stop on close(cancel_maintenance=True) or when the
        main thread has ended (interpreter shutdown, or an index nobody will close)."""
        return self._stop_retrain.is_set() or not threading.main_thread().is_alive()

    def _retrain_guarded(self) -> None:
        try:
            self._retrain_work(self._should_stop)
        except Cancelled:
            log.info("background re-training stopped before it finished; the index keeps its codec")
        except BaseException as exc:  # noqa: BLE001 - a failed re-train leaves the index as it was
            log.exception("background re-training failed")
            self.last_retrain_error = exc
        finally:
            self._retrain_thread = None

    def _live_vectors(self, seg: Segment, codec: ResidualCodec, local: torch.Tensor) -> PackedDocuments:
        """The given documents' vectors (originals when kept, else decompressed) as fp16 on the CPU."""
        pos = seg.positions(local)
        return PackedDocuments(
            seg.originals(codec, pos).cpu(), take(seg.token_ids, pos).cpu(), seg.lengths[local.to(seg.device)].cpu()
        )

    def _retrain_work(self, should_stop: StopCheck = None) -> None:
        start = self._snap
        old = start.codec
        if old is None:
            return
        parts = [(s, a.nonzero().flatten()) for s, a in zip(start.segments, start.alive, strict=True)]
        parts = [(s, loc) for s, loc in parts if loc.numel()]
        if not parts:
            return
        docs = PackedDocuments.concat([self._live_vectors(s, old, loc) for s, loc in parts])
        ids = [s.ids[i] for s, loc in parts for i in loc.tolist()]
        codec = self._train_codec(docs, should_stop)
        with self._lock:
            name = self._new_segment_name()
        rebuilt = Segment.build(name, ids, docs, codec, self._keeps_originals(codec), should_stop)
        rebuilt = rebuilt.to(self.device)
        del docs
        if should_stop is not None and should_stop():
            raise Cancelled("stopped on request")
        with self._lock:
            now = self._snap
            before = {id(s) for s in start.segments}
            segments, alive = [], []
            # documents of the rebuilt segment stay alive unless deleted or replaced meanwhile
            mask = torch.tensor(
                [id(now.segments[loc[0]]) in before if (loc := now.locations.get(x)) else False for x in ids],
                dtype=torch.bool,
            )
            segments.append(rebuilt)
            alive.append(mask)
            for seg, a in zip(now.segments, now.alive, strict=True):
                if id(seg) in before:
                    continue
                every = torch.arange(seg.n_docs)
                fresh = Segment.build(
                    self._new_segment_name(),
                    seg.ids,
                    self._live_vectors(seg, old, every),
                    codec,
                    self._keeps_originals(codec),
                ).to(self.device)
                segments.append(fresh)
                alive.append(a)
            locations: dict[str, tuple[int, int]] = {}
            for s, (seg, m) in enumerate(zip(segments, alive, strict=True)):
                for i in m.nonzero().flatten().tolist():
                    locations[seg.ids[i]] = (s, i)
            self._codec_entry = None
            self._publish(Snapshot(codec, tuple(segments), tuple(alive), locations, self._generation))
            log.info("re-trained the index codec: %d -> %d centroids", old.ncentroids, codec.ncentroids)

    # -- durability -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Make the current state durable: new files fsynced, then the manifest swapped atomically."""
        self._check_open()
        if self.path is None:
            return
        with self._lock:
            snap = self._snap
            folder = self.path
            generation = self._generation + 1
            if snap.codec is not None and self._codec_entry is None:
                arrays, meta = snap.codec.to_arrays()
                self._codec_entry = write_arrays(folder / f"codec-{generation:06d}.codec", arrays, meta)
            entries = []
            tombstones = {}
            for seg, mask in zip(snap.segments, snap.alive, strict=True):
                if seg.file is None:
                    seg.save(folder)
                saved_mask, entry = self._tombstones.get(seg.name, (None, None))
                if saved_mask is not mask:
                    deleted = (~mask).nonzero().flatten().numpy()
                    entry = None
                    if deleted.size:
                        entry = write_arrays(
                            folder / f"{seg.name}.del-{generation:06d}", {"deleted": deleted}
                        )
                tombstones[seg.name] = (mask, entry)
                entries.append(
                    {
                        "name": seg.name,
                        "file": seg.file,
                        "n_docs": seg.n_docs,
                        "n_vectors": seg.n_vectors,
                        "tombstones": entry,
                    }
                )
            write_manifest(
                folder,
                {
                    "dim": self.dim,
                    "nbits": self.nbits,
                    "settings": self.settings,
                    "codec": self._codec_entry,
                    "segments": entries,
                    "next_segment": self._next_segment,
                    "generation": generation,
                },
                FORMAT_VERSION if self.settings["quantizer"] == "pq" else BASE_FORMAT_VERSION,
            )
            self._generation = generation
            self._tombstones = tombstones
            self._collect_garbage(entries)

    def _collect_garbage(self, entries: list[dict]) -> None:
        """Remove files of this index that the manifest no longer references (after the swap)."""
        keep = {MANIFEST}
        if self._codec_entry:
            keep.add(self._codec_entry["file"])
        for e in entries:
            keep.add(e["file"]["file"])
            if e["tombstones"]:
                keep.add(e["tombstones"]["file"])
        for f in self.path.iterdir():
            if f.name not in keep and _OWN_FILE.match(f.name):
                try:
                    f.unlink()
                except OSError as exc:  # pragma: no cover - best effort
                    log.warning("could not remove stale index file %s: %s", f, exc)
