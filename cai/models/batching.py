"""Batching for in-process backends.

Requests from any thread or event loop go into one queue served by a single worker thread.
Results come back through ``concurrent.futures.Future`` objects, so callers on different
event loops (e.g. pytest's per-test loops) share one model safely.

- :class:`MicroBatcher` runs whole batches: the worker takes the first waiting request and
  keeps gathering while more arrive less than ``window_s`` apart (at most ``max_wait_s`` in
  all, up to ``max_batch_size``), then runs them as one batch; requests arriving meanwhile
  form the next batch.
- :class:`ContinuousBatcher` drives a :class:`SteppedEngine` (a decoder): between two steps,
  waiting requests join the running batch and finished ones return at once, so a short
  answer never waits for the longest one in its batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")
Req_contra = TypeVar("Req_contra", contravariant=True)

_STOP = object()


class _Worker(Generic[Req, Res]):
    """The queue, the worker thread and the gathering both batchers share."""

    def __init__(self, *, max_batch_size: int, window_s: float, max_wait_s: float, name: str):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
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

    def _work(self) -> None:
        raise NotImplementedError

    def _gather(self, first: tuple, room: int) -> tuple[list[tuple], bool]:
        """``first`` and up to ``room - 1`` more requests; True when a close came in."""
        items, stop = [first], False
        cutoff = time.monotonic() + self.max_wait_s
        while len(items) < room:
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


def _live(items: list[tuple]) -> list[tuple]:
    """The requests whose caller has not given up (cancelled) before they started."""
    return [(req, fut) for req, fut in items if fut.set_running_or_notify_cancel()]


class MicroBatcher(_Worker[Req, Res]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[Req]], Sequence[Res]],
        *,
        max_batch_size: int = 16,
        window_s: float = 0.005,
        max_wait_s: float = 0.05,
        name: str = "cai-microbatcher",
    ):
        super().__init__(max_batch_size=max_batch_size, window_s=window_s, max_wait_s=max_wait_s, name=name)
        self._run_batch = run_batch

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            items, stop = self._gather(first, self.max_batch_size)
            live = _live(items)
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


class SteppedEngine(Protocol[Req_contra]):
    """A batch that requests join and leave between steps. ``key`` is the caller's handle."""

    @property
    def active(self) -> int:
        """Requests in the batch now."""
        ...

    def admit(self, items: Sequence[tuple[Any, Req_contra]]) -> None:
        """Add requests to the batch."""
        ...

    def step(self) -> list[tuple[Any, Any]]:
        """Advance every request in the batch once; the (key, result) of those that finished."""
        ...

    def abort(self) -> None:
        """Drop every request (after an error)."""
        ...


class ContinuousBatcher(_Worker[Req, Res]):
    def __init__(
        self,
        engine: SteppedEngine[Req],
        *,
        max_batch_size: int = 16,
        window_s: float = 0.005,
        max_wait_s: float = 0.05,
        name: str = "cai-continuous-batcher",
    ):
        super().__init__(max_batch_size=max_batch_size, window_s=window_s, max_wait_s=max_wait_s, name=name)
        self.engine = engine

    def _waiting(self, room: int) -> tuple[list[tuple], bool]:
        """Requests queued now (without waiting), at most ``room``; True when a close came in."""
        items: list[tuple] = []
        while len(items) < room:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return items, True
            items.append(item)
        return items, False

    def _work(self) -> None:
        in_flight: dict[Future, None] = {}  # insertion-ordered set of running futures
        stop = False
        while not (stop and not in_flight):
            room = self.max_batch_size - len(in_flight)
            if not in_flight:  # idle: block for the next request, then gather its companions
                first = self._queue.get()
                if first is _STOP:
                    return
                items, stop = self._gather(first, room)
            else:
                items, closing = self._waiting(room) if room > 0 and not stop else ([], False)
                stop = stop or closing
            live = _live(items)
            try:
                if live:
                    self.engine.admit([(fut, req) for req, fut in live])
                    in_flight.update((fut, None) for _, fut in live)
                    self.batch_sizes.append(len(in_flight))
                if in_flight:
                    for fut, result in self.engine.step():
                        in_flight.pop(fut, None)
                        if isinstance(result, BaseException):
                            fut.set_exception(result)
                        else:
                            fut.set_result(result)
            except BaseException as exc:  # surface to every caller; keep the worker alive
                self.engine.abort()
                for fut in list(in_flight) + [fut for _, fut in live if fut not in in_flight]:
                    fut.set_exception(exc)
                in_flight.clear()
