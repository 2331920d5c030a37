"""A run's append-only JSONL outputs, their committed sizes kept in the store (``cai.runner``).

A done sample's lines are appended only once its outcome is committed, and the files' new sizes
are committed only after the lines are flushed. So on the next run, truncating the files to the
committed sizes and writing the done samples not marked written leaves every done sample in
every file exactly once, wherever the process died.

Lines are written in batches: ``write_after`` queues a sample behind its outcome's commit and
returns at once (the worker moves on to its next sample); the samples whose commits have
landed are written together on the next loop tick, one write and one flush per file and one
size commit for all of them. ``close`` waits for every queued commit and writes what it holds,
so an orderly end or Ctrl-C leaves every committed sample in the files; after a kill the next
``open`` writes them from the store.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from cai.store import RunStore, to_json


@dataclass
class OutputWriter:
    """A JSONL file in the run directory; ``lines(record)`` gives the rows for one done sample."""

    name: str
    lines: Callable[[dict[str, Any]], Iterable[dict[str, Any]]]


_Queued = tuple[concurrent.futures.Future[None], str, dict[str, Any]]  # commit, sample id, record


class OutputFiles:
    def __init__(self, store: RunStore, writers: Sequence[OutputWriter]):
        self.store = store
        self.writers = list(writers)
        self.files: dict[str, IO[str]] = {}
        self._queued: collections.deque[_Queued] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._error: BaseException | None = None  # a failed write: the next write_after raises it

    def open(self) -> None:
        if self.store.run_dir is None or not self.writers:
            self.writers = []
            return
        paths = {w.name: self.store.run_dir / w.name for w in self.writers}
        sizes = self.store.output_sizes()
        consistent = all(
            name in sizes and path.exists() and path.stat().st_size >= sizes[name] for name, path in paths.items()
        ) or not self.store.status_counts().get("done")
        if not consistent:  # a file was deleted/shortened or a writer added: rebuild from the store
            self.store.reset_outputs()
            sizes = {}
        for name, path in paths.items():
            with open(path, "a", encoding="utf-8") as f:  # create if missing
                f.truncate(sizes.get(name, 0))  # drop anything written after the last commit
            self.files[name] = open(path, "a", encoding="utf-8")
        self._write([(row.id, row.record or {}) for row in self.store.samples("done") if not row.written])

    def write_after(self, committed: concurrent.futures.Future[None], sample_id: str, record: dict[str, Any]) -> None:
        """Append the done sample's lines once ``committed`` (its outcome's commit) is done."""
        if self._error is not None:
            raise self._error
        if not self.writers:
            return
        self._loop = self._loop or asyncio.get_running_loop()
        self._queued.append((committed, sample_id, record))
        committed.add_done_callback(self._commit_landed)

    def _commit_landed(self, _: concurrent.futures.Future[None]) -> None:
        # on the store's writer thread: one drain for all the commits that land before it runs
        loop = self._loop
        if self._drain_scheduled or loop is None or loop.is_closed():
            return
        self._drain_scheduled = True
        loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """Write the queued samples whose commits are done (commits land in queue order)."""
        self._drain_scheduled = False  # before looking: a commit landing from here on schedules another
        if self._error is not None:  # after a failed write nothing more: a torn line must stay past the sizes
            return
        ready = []
        while self._queued and self._queued[0][0].done():
            committed, sample_id, record = self._queued.popleft()
            if committed.exception() is None:  # a failed commit: never written (the store raises it)
                ready.append((sample_id, record))
        try:
            self._write(ready)
        except Exception as exc:  # e.g. disk full: stop the run at its next sample
            self._error = self._error or exc

    def _write(self, samples: list[tuple[str, dict[str, Any]]]) -> None:
        if not samples:
            return
        chunks: dict[str, list[str]] = {w.name: [] for w in self.writers}
        for _, record in samples:  # each record through every writer in turn (see cai.outputs)
            for writer in self.writers:
                chunks[writer.name].extend(to_json(line) + "\n" for line in writer.lines(record))
        sizes = {}
        for name, lines in chunks.items():
            f = self.files[name]
            f.write("".join(lines))
            f.flush()
            sizes[name] = f.tell()
        self.store.mark_written([sample_id for sample_id, _ in samples], sizes)

    def close(self) -> None:
        """Wait for the queued commits, write their samples, close the files; raises a failed write."""
        try:
            concurrent.futures.wait([committed for committed, _, _ in self._queued])
            self._drain()
        finally:
            self._loop = None
            self._queued.clear()
            for f in self.files.values():
                f.close()
            self.files.clear()
        if self._error is not None:
            raise self._error
