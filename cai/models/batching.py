"""Dynamic micro-batching for in-process backends.

Requests from any thread or event loop go into one queue; a single worker thread takes the
first waiting request and keeps gathering while more arrive less than ``window_s`` apart
(at most ``max_wait_s`` in all, up to ``max_batch_size``), then runs them as one batch. While a batch runs, new requests queue up
and form the next batch. Results come back through ``concurrent.futures.Future`` objects, so
callers on different event loops (e.g. pytest's per-test loops) share one model safely.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")

_STOP = object()


class MicroBatcher(Generic[Req, Res]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[Req]], Sequence[Res]],
        *,
        max_batch_size: int = 16,
        window_s: float = 0.005,
        max_wait_s: float = 0.05,
        name: str = "cai-microbatcher",
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._name = name
        self.batch_sizes: list[int] = []  # observed batch sizes, for tests and benchmarks

    def submit(self, request: Req) -> Future[Res]:
        future: Future[Res] = Future()
        self._ensure_worker()
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join(timeout=30)
                self._thread = None

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _gather(self, first: tuple) -> tuple[list[tuple], bool]:
        items, stop = [first], False
        cutoff = time.monotonic() + self.max_wait_s
        while len(items) < self.max_batch_size:
            timeout = min(self.window_s, cutoff - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            items.append(item)
        return items, stop

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            items, stop = self._gather(first)
            # drop requests whose caller gave up (cancelled) before the batch started
            live = [(req, fut) for req, fut in items if fut.set_running_or_notify_cancel()]
            if live:
                self.batch_sizes.append(len(live))
                try:
                    results = self._run_batch([req for req, _ in live])
                except BaseException as exc:  # surface to every caller; keep the worker alive
                    for _, fut in live:
                        fut.set_exception(exc)
                else:
                    for (_, fut), result in zip(live, results):
                        if isinstance(result, BaseException):
                            fut.set_exception(result)
                        else:
                            fut.set_result(result)
            if stop:
                return
