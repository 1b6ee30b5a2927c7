"""Micro-batching of query encoding across concurrent requests.

Callers on any thread submit texts and wait; one worker thread per encoder takes everything queued
(up to ``max_batch``) and encodes it in one forward pass, so concurrent requests share the matmuls and
torch's intra-op threads keep every core busy. A lone request is encoded at once (no added wait
unless ``max_wait_s`` > 0).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import torch

from tessera.client.errors import DeadlineExceeded, Unavailable

log = logging.getLogger(__name__)


class QueryBatcher:
    def __init__(
        self,
        encode: Callable[[list[str]], torch.Tensor],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        name: str = "query-encoder",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self.batches = 0  # counters for tests and logs
        self.encoded = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, texts: Sequence[str]) -> list[Future]:
        if self._closed:
            raise Unavailable("the server is shutting down")
        futures = []
        for text in texts:
            fut: Future = Future()
            self._queue.put((text, fut))
            futures.append(fut)
        return futures

    def encode(self, texts: Sequence[str], timeout: float | None = None) -> torch.Tensor:
        """[n, Lq, dim] vectors of the texts (batched with whatever else is queued)."""
        futures = self.submit(texts)
        end = None if timeout is None else time.monotonic() + timeout
        out = []
        for fut in futures:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                out.append(fut.result(left))
            except FutureTimeout:
                for f in futures:
                    f.cancel()
                raise DeadlineExceeded("the deadline passed while the query was being encoded") from None
        return torch.stack(out) if out else torch.empty(0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            end = time.monotonic() + self.max_wait_s
            stop = False
            while len(batch) < self.max_batch:
                try:
                    left = end - time.monotonic()
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            live = [(t, f) for t, f in batch if f.set_running_or_notify_cancel()]
            if live:
                self._encode_batch(live)
            if stop:
                return

    def _encode_batch(self, batch: list[tuple[str, Future]]) -> None:
        start = time.perf_counter()
        try:
            vectors = self._encode([t for t, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            log.exception("query encoding failed")
            for _, fut in batch:
                fut.set_exception(exc)
            return
        for row, (_, fut) in enumerate(batch):
            fut.set_result(vectors[row])
        self.batches += 1
        self.encoded += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - start)
