"""Per-run SQLite state: run config, sample status, and a cache of finished LLM calls.

One file, ``state.sqlite``, in the run directory (WAL mode: a committed transaction survives
``kill -9``). The store is the source of truth for resume; output files are derived from it
(see ``cai.runner``).

- ``config``: the run's config (model spec, params, constitution hash, ...). Opening a run
  directory with a different config raises ``ConfigMismatchError`` naming the fields that
  differ, unless ``new_run=True`` (the old directory is moved aside, never deleted).
- ``samples``: one row per sample: status (``done`` | ``failed``), failure reason, the result
  record (JSON), whether its output lines are written, attempts, counters.
- ``calls``: finished LLM calls keyed by ``cai.models.call_key`` (model spec, params, messages).
  ``CachedModel(model, store)`` serves a call from here when it finished before, so a resumed
  or repeated run never pays for the same call twice. ``model_calls`` counts real calls over the
  life of the run (persisted with each insert), so ``model_calls == cached_calls`` holds iff no
  finished call was ever repeated.

Seeding (the one place): inside a ``sample_scope``, a sampled call (temperature > 0) without a
seed gets ``sample_seed(run seed, sample id, len(messages))``, so the seed is part of the normal
call key: two samples with the same prompt, and two turns of one sample, draw independently,
while a rerun of a sample reproduces (and hits the cache of) its own calls. The run seed is the
``seed`` of the run's config (0 when it has none), or ``CachedModel(..., seed=)``.

Writes are batched: finished calls and "output lines written" marks are held in memory and
committed in one transaction on the next event-loop tick (immediately outside a loop); a
sample's outcome (``finish_sample``) commits synchronously together with every call held
before it. A crash loses at most the calls of the last tick, never a finished sample's record;
reads, ``close`` and ``flush`` commit what is held first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import fcntl
import json
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cai.errors import ConfigMismatchError, RunLockedError
from cai.models.base import ChatModel, Completion, GenParams, Message, ModelWrapper, Usage, call_key
from cai.redact import scrub

DB_NAME = "state.sqlite"
_SAMPLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("cai_sample", default=None)


@contextlib.contextmanager
def sample_scope(sample_id: str) -> Iterator[None]:
    """Calls made inside belong to this sample (the runner wraps each sample's work in it);
    sampled calls get a per-sample seed from ``CachedModel`` (see the module doc)."""
    token = _SAMPLE.set(sample_id)
    try:
        yield
    finally:
        _SAMPLE.reset(token)


def current_sample() -> str | None:
    """The id of the sample whose work is running in this task (``sample_scope``), else None."""
    return _SAMPLE.get()


def sample_seed(run_seed: int, sample_id: str, turn: int) -> int:
    """The seed of a sampled call: stable across processes, distinct per (run seed, sample, turn)."""
    return random.Random(f"{run_seed}:{sample_id}:{turn}").getrandbits(31)


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def to_json(data: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON text (orjson; non-ASCII kept). What orjson refuses (e.g. integers past
    64 bits) goes through the json module with the same rules."""
    try:
        option = _ORJSON_OPTIONS | orjson.OPT_SORT_KEYS if sort_keys else _ORJSON_OPTIONS
        return orjson.dumps(data, option=option).decode()
    except TypeError:
        return json.dumps(data, ensure_ascii=False, sort_keys=sort_keys, separators=(",", ":"))


LOCK_NAME = ".lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    input_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    record TEXT,
    counters TEXT,
    written INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    seq INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, completion TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (name TEXT PRIMARY KEY, size INTEGER NOT NULL);
"""


@dataclass
class SampleRow:
    id: str
    input_hash: str
    status: str
    reason: str | None
    record: dict[str, Any] | None
    counters: dict[str, float]
    written: bool
    attempts: int


def _dumps(data: Any) -> str:
    return to_json(data, sort_keys=True)


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        if _dumps(old.get(key)) != _dumps(new.get(key)):
            lines.append(f"  {key}: {old.get(key)!r} -> {new.get(key)!r}")
    return lines


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    # NORMAL in WAL mode: a commit is durable once write() returns (survives kill -9)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@dataclass
class _Batch:
    """Writes committed together in one transaction."""

    calls: dict[str, str] = field(default_factory=dict)  # call key -> completion JSON
    written: dict[str, None] = field(default_factory=dict)  # sample ids whose lines are on disk
    sizes: dict[str, int] = field(default_factory=dict)  # output file sizes after them
    sample: tuple[Any, ...] | None = None  # a finished sample's row
    meta: dict[str, str] = field(default_factory=dict)
    reset_outputs: bool = False

    def __bool__(self) -> bool:
        return bool(self.calls or self.written or self.sample or self.meta or self.reset_outputs)


def _commit_batch(db: sqlite3.Connection, *batches: _Batch) -> None:
    """Commit the batches, in order, in one transaction."""
    with db:
        db.execute("BEGIN")
        for batch in batches:
            _apply(db, batch)


def _apply(db: sqlite3.Connection, batch: _Batch) -> None:
    if batch.calls:
        now = time.time()
        db.executemany(
            "INSERT OR REPLACE INTO calls(key, completion, created) VALUES(?, ?, ?)",
            [(key, text, now) for key, text in batch.calls.items()],
        )
        db.execute(
            "INSERT INTO meta(key, value) VALUES('model_calls', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=CAST(value AS INTEGER)+excluded.value",
            (len(batch.calls),),
        )
    if batch.sample is not None:
        db.execute(
            "INSERT INTO samples(id, input_hash, status, reason, record, counters, written, attempts, seq, updated) "
            "VALUES(?, ?, ?, ?, ?, ?, 0, 1, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "status=excluded.status, reason=excluded.reason, record=excluded.record, "
            "counters=excluded.counters, written=0, attempts=samples.attempts+1, "
            "seq=excluded.seq, updated=excluded.updated",
            batch.sample,
        )
    if batch.written:
        db.executemany("UPDATE samples SET written=1 WHERE id=?", [(i,) for i in batch.written])
        db.executemany(
            "INSERT INTO outputs(name, size) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET size=excluded.size",
            list(batch.sizes.items()),
        )
    if batch.meta:
        db.executemany(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            list(batch.meta.items()),
        )
    if batch.reset_outputs:
        db.execute("DELETE FROM outputs")
        db.execute("UPDATE samples SET written=0")


_Pending = tuple[_Batch, concurrent.futures.Future[None]]  # a batch and the future its commit resolves


def _commit_group(db: sqlite3.Connection, group: list[_Pending]) -> None:
    """Commit the group's batches in one transaction, then resolve each future (all fail together)."""
    try:
        _commit_batch(db, *(batch for batch, _ in group))
    except BaseException as exc:
        for _, future in group:
            future.set_exception(exc)
    else:
        for _, future in group:
            future.set_result(None)


def _commit_inline(db: sqlite3.Connection, batch: _Batch) -> concurrent.futures.Future[None]:
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    _commit_group(db, [(batch, future)])
    return future


class _Writer:
    """One thread with its own connection, committing batches in the order they are sent.
    Group commit: the batches that queued up while a transaction ran go in the next one
    together (a commit costs the same for one sample as for fifty)."""

    def __init__(self, path: Path):
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(path, opened), name="cai-store-writer", daemon=True)
        self._thread.start()
        opened.result()

    def _run(self, path: Path, opened: concurrent.futures.Future[None]) -> None:
        try:
            db = _connect(path)
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(None)
        try:
            while True:
                item = self._queue.get()
                group = []
                while item is not None:
                    group.append(item)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if group:
                    _commit_group(db, group)
                if item is None:
                    return
        finally:
            db.close()

    def submit(self, batch: _Batch) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put((batch, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


class RunStore:
    """SQLite state of one run. ``run_dir=None`` keeps everything in memory (no resume);
    ``read_only=True`` opens an existing run for reading without taking its lock.

    Single-writer: the store takes an exclusive lock file in the run directory so two
    processes cannot run in the same directory at once (the OS drops it when a process dies).
    """

    def __init__(
        self,
        run_dir: str | Path | None,
        config: dict[str, Any] | None = None,
        *,
        new_run: bool = False,
        read_only: bool = False,
    ):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.moved_to: Path | None = None
        self._lock_fd: int | None = None
        if self.run_dir is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
        elif read_only:  # for readers (export, status) while a run may be going: no lock
            db = (self.run_dir / DB_NAME).resolve()
            if not db.exists():
                raise FileNotFoundError(f"{self.run_dir} is not a run directory (no {DB_NAME})")
            self._db = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, isolation_level=None)
        else:
            if new_run and (self.run_dir / DB_NAME).exists():
                self.moved_to = self._move_aside(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
            self._db = _connect(self.run_dir / DB_NAME)
            self._db.execute("PRAGMA journal_mode=WAL")
        if not read_only:
            self._db.executescript(_SCHEMA)
        # on disk, commits run on a writer thread with its own connection (WAL: readers here
        # never wait for it), so a slow disk never stalls the event loop
        self._writer = _Writer(self.run_dir / DB_NAME) if self.run_dir is not None and not read_only else None
        self.hits = 0  # calls served from the cache by this process
        self.misses = 0  # real calls made by this process
        self.usage = Usage()  # tokens of this process's real calls
        self._held = _Batch()  # writes held until the next commit (see the module doc)
        self._committing: list[tuple[concurrent.futures.Future[None], _Batch]] = []
        self._write_error: BaseException | None = None  # a background commit that failed
        self._commit_scheduled = False
        self._seq: int | None = None  # the last sample seq, read once (single writer)
        # every call key the calls table holds or will hold once committed, when this store is
        # its only writer (so a miss, the common case in a new run, costs no query); None: ask
        self._call_keys: set[str] | None = None
        if not read_only:
            self._call_keys = {row[0] for row in self._db.execute("SELECT key FROM calls")}
        if config is not None:
            try:
                self._check_config(config)
            except BaseException:
                self.close()
                raise

    # -- config ----------------------------------------------------------------------------

    @staticmethod
    def _move_aside(run_dir: Path) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
        run_dir.rename(target)
        return target

    def _check_config(self, config: dict[str, Any]) -> None:
        config = orjson.loads(_dumps(config))  # normalise tuples etc. the way they are stored
        old = self.get_meta("config")
        if old is None:
            self.set_meta("config", config)
            self.set_meta("created", time.time())
            return
        diff = config_diff(old, config)
        if diff:
            where = self.run_dir if self.run_dir is not None else "memory"
            raise ConfigMismatchError(
                f"run directory {where} holds a run with a different config:\n"
                + "\n".join(diff)
                + "\nRerun with the same options to resume it, pass --new-run to move it aside "
                "and start over, or choose another --out directory."
            )

    @property
    def config(self) -> dict[str, Any]:
        return self.get_meta("config") or {}

    def get_meta(self, key: str) -> Any:
        self.flush()
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        self._send(_Batch(meta={key: _dumps(value)})).result()

    # -- batched writes -------------------------------------------------------------------

    def _send(self, batch: _Batch) -> concurrent.futures.Future[None]:
        """Start committing ``batch`` (in order after the batches before it); until it is
        committed its calls stay visible to ``get_call``."""
        if self._write_error is not None:
            raise self._write_error
        future = self._writer.submit(batch) if self._writer is not None else _commit_inline(self._db, batch)
        self._committing.append((future, batch))
        return future

    def _settle(self, wait: bool) -> None:
        """Forget committed batches (all of them, waiting, when ``wait``); keep the first error."""
        while self._committing and (wait or self._committing[0][0].done()):
            future, _ = self._committing.pop(0)
            try:
                future.result()
            except BaseException as exc:
                self._write_error = self._write_error or exc
        if wait and self._write_error is not None:
            raise self._write_error

    def _take_held(self) -> _Batch:
        batch, self._held = self._held, _Batch()
        return batch

    def _hold(self) -> None:
        """Commit what is held on the next loop tick (now, outside a loop)."""
        if self._commit_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._commit_scheduled = True
        loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._commit_scheduled = False
        if self._db is None or self._write_error is not None:
            return  # closed; or failed: the next finish_sample raises the error
        if self._held:
            self._send(self._take_held())
        self._settle(wait=False)

    def flush(self) -> None:
        """Commit the held writes and wait until every write so far is committed."""
        if self._held:
            self._send(self._take_held())
        self._settle(wait=True)

    # -- LLM call cache -------------------------------------------------------------------

    def get_call(self, key: str) -> Completion | None:
        if self._call_keys is not None and key not in self._call_keys:
            return None
        text = self._held.calls.get(key)
        for _, batch in reversed(self._committing):
            if text is not None:
                break
            text = batch.calls.get(key)
        if text is None:
            row = self._db.execute("SELECT completion FROM calls WHERE key=?", (key,)).fetchone()
            if row is None:
                return None
            text = row[0]
        completion = Completion.from_dict(orjson.loads(text))
        completion.cached = True
        return completion

    def put_call(self, key: str, completion: Completion) -> None:
        """Record a finished call (committed with the next tick's batch)."""
        self._held.calls[key] = to_json(completion.to_dict())
        if self._call_keys is not None:
            self._call_keys.add(key)
        self._hold()

    @property
    def model_calls(self) -> int:
        """Real model calls made over the life of this run (all processes)."""
        return int(self.get_meta("model_calls") or 0)

    @property
    def cached_calls(self) -> int:
        self.flush()
        return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    # -- samples --------------------------------------------------------------------------

    def sample(self, sample_id: str) -> SampleRow | None:
        self.flush()
        row = self._db.execute(
            "SELECT id, input_hash, status, reason, record, counters, written, attempts FROM samples WHERE id=?",
            (sample_id,),
        ).fetchone()
        return self._row(row) if row else None

    def samples(self, status: str | None = None) -> Iterator[SampleRow]:
        self.flush()
        sql = "SELECT id, input_hash, status, reason, record, counters, written, attempts FROM samples"
        args: tuple[Any, ...] = ()
        if status:
            sql += " WHERE status=?"
            args = (status,)
        for row in self._db.execute(sql + " ORDER BY seq, id", args).fetchall():
            yield self._row(row)

    def sample_states(self) -> dict[str, tuple[str, str, dict[str, float]]]:
        """Every sample's (input hash, status, counters), in one query (no records decoded)."""
        self.flush()
        rows = self._db.execute("SELECT id, input_hash, status, counters FROM samples").fetchall()
        return {r[0]: (r[1], r[2], orjson.loads(r[3]) if r[3] else {}) for r in rows}

    @staticmethod
    def _row(row: Sequence[Any]) -> SampleRow:
        return SampleRow(
            id=row[0],
            input_hash=row[1],
            status=row[2],
            reason=row[3],
            record=orjson.loads(row[4]) if row[4] else None,
            counters=orjson.loads(row[5]) if row[5] else {},
            written=bool(row[6]),
            attempts=int(row[7]),
        )

    def status_counts(self) -> dict[str, int]:
        self.flush()
        return dict(self._db.execute("SELECT status, COUNT(*) FROM samples GROUP BY status").fetchall())

    def finish_sample(
        self,
        sample_id: str,
        input_hash: str,
        *,
        record: dict[str, Any] | None,
        failed: str | None = None,
        counters: dict[str, float] | None = None,
        wait: bool = True,
    ) -> concurrent.futures.Future[None]:
        """Record a sample's outcome (``failed`` is the reason, else it is done), committed
        together with everything held: before this returns, or, with ``wait=False``, when the
        returned future is done (``await asyncio.wrap_future(...)`` keeps the loop free)."""
        future = self._send(self._sample_batch(sample_id, input_hash, record, failed, counters))
        if wait:
            future.result()
            self._settle(wait=False)
        return future

    def _sample_batch(
        self,
        sample_id: str,
        input_hash: str,
        record: dict[str, Any] | None,
        failed: str | None,
        counters: dict[str, float] | None,
    ) -> _Batch:
        status = "failed" if failed else "done"
        text = to_json(record) if record is not None else None
        if failed:  # an error message can quote what the upstream echoed (keys, auth headers)
            failed, text = scrub(failed), scrub(text) if text is not None else None
        if self._seq is None:
            self._seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM samples").fetchone()[0])
        self._seq += 1
        batch = self._take_held()
        batch.sample = (sample_id, input_hash, status, failed, text, _dumps(counters or {}), self._seq, time.time())
        return batch

    def mark_written(self, sample_ids: Iterable[str], sizes: dict[str, int]) -> None:
        """The samples' output lines are on disk; files now end at ``sizes`` (committed with the
        next batch: until then a restart truncates the files and writes the samples again)."""
        self._held.written.update(dict.fromkeys(sample_ids))
        self._held.sizes.update(sizes)
        self._hold()

    def output_sizes(self) -> dict[str, int]:
        self.flush()
        return dict(self._db.execute("SELECT name, size FROM outputs").fetchall())

    def reset_outputs(self) -> None:
        """Forget what was written (before rebuilding output files from the stored records)."""
        self._send(_Batch(reset_outputs=True)).result()
        self._settle(wait=True)

    # -- lifecycle ------------------------------------------------------------------------

    def _lock(self) -> None:
        assert self.run_dir is not None
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.run_dir} is in use by another process; wait for it to finish "
                "or stop it (a killed process releases the lock)"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._db is not None:
            try:
                self.flush()
            finally:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                self._db.close()
            self._db = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class CachedModel(ModelWrapper):
    """A ChatModel that serves finished calls from a run store and records new ones.

    The key is ``call_key(model.spec, messages, params)``, after a sampled call in a sample
    scope got its seed (``seed``: the run seed, default the ``seed`` of the store's config, else
    0; see the module doc). An explicit ``params.seed`` is kept. Concurrent identical calls
    share one request. Only successful, non-empty completions are cached (remote backends raise
    an empty one as a transient error; a local model's empty answer is returned but a rerun
    asks again). ``store.hits``/``store.misses``/``store.usage`` count this process's cached
    and real calls.
    """

    def __init__(self, model: ChatModel, store: RunStore, *, seed: int | None = None):
        super().__init__(model)
        self.store = store
        self.seed = int(seed if seed is not None else store.config.get("seed") or 0)
        self._inflight: dict[str, asyncio.Future[Completion]] = {}

    def seeded(self, messages: Sequence[Message], params: GenParams) -> GenParams:
        """``params`` with the sample's seed for this turn when the call is sampled and unseeded."""
        if params.temperature > 0 and params.seed is None:
            sample = current_sample()
            if sample is not None:
                return params.replace(seed=sample_seed(self.seed, sample, len(messages)))
        return params

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = self.seeded(messages, params or GenParams())
        key = call_key(self.spec, messages, params)
        cached = self.store.get_call(key)
        if cached is not None:
            self.store.hits += 1
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            self.store.hits += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            completion = await self.model.chat(messages, params)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        if completion.text or completion.logprobs:  # an empty answer is never replayed
            self.store.put_call(key, completion)
        self.store.misses += 1
        self.store.usage = self.store.usage + Usage(
            completion.usage.prompt_tokens, completion.usage.completion_tokens, 1
        )
        future.set_result(completion)
        return completion

    async def aclose(self) -> None:
        await self.model.aclose()
