"""Per-run SQLite state: run config, sample status, and a cache of finished LLM calls.

One file, ``state.sqlite``, in the run directory (WAL mode: a committed transaction survives
``kill -9``). The store is the source of truth for resume; output files are derived from it
(see ``cai.runner``).

- ``config``: the run's config (model spec, params, constitution hash, ...). Opening a run
  directory with a different config raises ``ConfigMismatchError`` naming the fields that
  differ, unless ``new_run=True`` (the old directory is moved aside, never deleted).
- ``samples``: one row per sample: status (``done`` | ``failed``), failure reason, the result
  record (JSON), whether its output lines are written, attempts, counters.
- ``calls``: finished LLM calls keyed by ``cai.models.call_key`` (model spec, params, messages;
  for a sampled call, temperature > 0, also the sample id: see ``sample_scope``).
  ``CachedModel(model, store)`` serves a call from here when it finished before, so a resumed
  or repeated run never pays for the same call twice. ``model_calls`` counts real calls over the
  life of the run (persisted with each insert), so ``model_calls == cached_calls`` holds iff no
  finished call was ever repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.models.base import ChatModel, Completion, GenParams, Message, ModelWrapper, Usage, call_key
from cai.redact import scrub

DB_NAME = "state.sqlite"
_SAMPLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("cai_sample", default=None)


@contextlib.contextmanager
def sample_scope(sample_id: str) -> Iterator[None]:
    """Calls made inside belong to this sample (the runner wraps each sample's work in it):
    a sampled call (temperature > 0) is cached per sample, so two samples with the same prompt
    get independent answers while a rerun of one sample still hits its cache."""
    token = _SAMPLE.set(sample_id)
    try:
        yield
    finally:
        _SAMPLE.reset(token)


def sample_call_key(spec: str, messages: Sequence[Message], params: GenParams) -> str:
    key = call_key(spec, messages, params)
    sample = _SAMPLE.get()
    if params.temperature > 0 and sample is not None:
        key = hashlib.sha256(f"{key}\0sample={sample}".encode()).hexdigest()
    return key


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


class ConfigMismatchError(ValueError):
    """The run directory holds a run with a different config."""


class RunLockedError(RuntimeError):
    """Another process is running in this run directory."""


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
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        if _dumps(old.get(key)) != _dumps(new.get(key)):
            lines.append(f"  {key}: {old.get(key)!r} -> {new.get(key)!r}")
    return lines


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
            self._db = sqlite3.connect(self.run_dir / DB_NAME, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit is durable once write() returns (survives kill -9)
            self._db.execute("PRAGMA synchronous=NORMAL")
        if not read_only:
            self._db.executescript(_SCHEMA)
        self.hits = 0  # calls served from the cache by this process
        self.misses = 0  # real calls made by this process
        self.usage = Usage()  # tokens of this process's real calls
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
        config = json.loads(_dumps(config))  # normalise tuples etc. the way they are stored
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
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, _dumps(value)),
        )

    # -- LLM call cache -------------------------------------------------------------------

    def get_call(self, key: str) -> Completion | None:
        row = self._db.execute("SELECT completion FROM calls WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        completion = Completion.from_dict(json.loads(row[0]))
        completion.cached = True
        return completion

    def put_call(self, key: str, completion: Completion) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO calls(key, completion, created) VALUES(?, ?, ?)",
                (key, _dumps(completion.to_dict()), time.time()),
            )
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES('model_calls', '1') "
                "ON CONFLICT(key) DO UPDATE SET value=CAST(value AS INTEGER)+1"
            )

    @property
    def model_calls(self) -> int:
        """Real model calls made over the life of this run (all processes)."""
        return int(self.get_meta("model_calls") or 0)

    @property
    def cached_calls(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    # -- samples --------------------------------------------------------------------------

    def sample(self, sample_id: str) -> SampleRow | None:
        row = self._db.execute(
            "SELECT id, input_hash, status, reason, record, counters, written, attempts FROM samples WHERE id=?",
            (sample_id,),
        ).fetchone()
        return self._row(row) if row else None

    def samples(self, status: str | None = None) -> Iterator[SampleRow]:
        sql = "SELECT id, input_hash, status, reason, record, counters, written, attempts FROM samples"
        args: tuple[Any, ...] = ()
        if status:
            sql += " WHERE status=?"
            args = (status,)
        for row in self._db.execute(sql + " ORDER BY seq, id", args).fetchall():
            yield self._row(row)

    @staticmethod
    def _row(row: Sequence[Any]) -> SampleRow:
        return SampleRow(
            id=row[0],
            input_hash=row[1],
            status=row[2],
            reason=row[3],
            record=json.loads(row[4]) if row[4] else None,
            counters=json.loads(row[5]) if row[5] else {},
            written=bool(row[6]),
            attempts=int(row[7]),
        )

    def status_counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, COUNT(*) FROM samples GROUP BY status").fetchall())

    def finish_sample(
        self,
        sample_id: str,
        input_hash: str,
        *,
        record: dict[str, Any] | None,
        failed: str | None = None,
        counters: dict[str, float] | None = None,
    ) -> None:
        """Record a sample's outcome (``failed`` is the reason, else it is done)."""
        status = "failed" if failed else "done"
        text = json.dumps(record, ensure_ascii=False) if record is not None else None
        if failed:  # an error message can quote what the upstream echoed (keys, auth headers)
            failed, text = scrub(failed), scrub(text) if text is not None else None
        with self._db:
            self._db.execute("BEGIN")
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM samples").fetchone()[0]
            self._db.execute(
                "INSERT INTO samples(id, input_hash, status, reason, record, counters, written, attempts, seq, updated) "
                "VALUES(?, ?, ?, ?, ?, ?, 0, 1, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "status=excluded.status, reason=excluded.reason, record=excluded.record, "
                "counters=excluded.counters, written=0, attempts=samples.attempts+1, "
                "seq=excluded.seq, updated=excluded.updated",
                (
                    sample_id,
                    input_hash,
                    status,
                    failed,
                    text,
                    _dumps(counters or {}),
                    seq,
                    time.time(),
                ),
            )

    def mark_written(self, sample_id: str, sizes: dict[str, int]) -> None:
        """The sample's output lines are on disk; files now end at ``sizes`` (one transaction)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE samples SET written=1 WHERE id=?", (sample_id,))
            self._db.executemany(
                "INSERT INTO outputs(name, size) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET size=excluded.size",
                list(sizes.items()),
            )

    def output_sizes(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT name, size FROM outputs").fetchall())

    def reset_outputs(self) -> None:
        """Forget what was written (before rebuilding output files from the stored records)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM outputs")
            self._db.execute("UPDATE samples SET written=0")

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

    The key is ``call_key(model.spec, messages, params)`` (per sample when sampled, see
    ``sample_scope``). Concurrent identical calls share one request. Only successful, non-empty
    completions are cached (remote backends raise an empty one as a transient error; a local
    model's empty answer is returned but a rerun asks again).
    ``store.hits``/``store.misses``/``store.usage`` count this process's cached and real calls.
    """

    def __init__(self, model: ChatModel, store: RunStore):
        super().__init__(model)
        self.store = store
        self._inflight: dict[str, asyncio.Future[Completion]] = {}

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = params or GenParams()
        key = sample_call_key(self.spec, messages, params)
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
