"""Scale-out on a Ray cluster: ``RayPool``, a ChatModel whose calls go to N replicas, each a
Ray actor that builds its own model with ``load_model(spec, **options)`` in its process (an
in-process ``vllm:`` engine on its GPU, ``hf:`` / ``embedded``, or an ``openai:`` client of
its own endpoint).

The driver keeps all state: the runner wraps the pool in ``CachedModel(pool, store)``, so
every call is looked up in and recorded by the run's one store in the driver process. A
replica holds nothing worth keeping, and exactly-once and resume are the store's, across the
cluster as in one process: a call that finished is stored once and never asked again.

Routing: every call of one sample (the runner's ``sample_scope``, else the conversation's first
user message) goes to the same replica, so its prefix cache keeps working. A sample seen for
the first time goes to the live replica with the fewest calls in flight (ties: the lowest
index): a slow replica gets fewer new samples instead of a fixed share. When a replica's
process dies, Ray restarts its actor (``max_restarts=-1``) while the driver moves that
replica's samples to the others and retries their failed calls there.

``ray`` is imported only when a pool is built.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cai.errors import ModelSpecError
from cai.models.base import Capabilities, ChatModel, Completion, GenParams, Message, TransientModelError

POOL_OPTIONS = ("replicas", "ray", "base_urls", "replica_options", "num_gpus", "num_cpus", "ready_timeout")
_STICKY_MAX = 100_000  # sample -> replica entries kept (oldest dropped first)
_closed_stats: list[tuple[str, list[dict[str, Any]]]] = []


class _Replica:
    """The actor body: one model in one worker process."""

    def __init__(self, spec: str, options: dict[str, Any]):
        from cai.models.registry import load_model

        self.model = load_model(spec, **options)

    def info(self) -> dict[str, Any]:
        probe = [{"role": "user", "content": "x"}]
        return {
            "pid": os.getpid(),
            "capabilities": self.model.capabilities,
            "counts_tokens": self.model.count_tokens(probe) is not None,
        }

    async def chat(self, messages: list[Message], params: GenParams) -> Completion | Exception:
        """The completion, or the backend's error returned (not raised) so that the driver
        re-raises it as it was, ``ModelError`` subclass and ``reason`` included."""
        try:
            return await self.model.chat(messages, params)
        except Exception as exc:
            return exc

    def count_tokens(self, messages: list[Message]) -> int | None:
        return self.model.count_tokens(messages)

    async def aclose(self) -> None:
        await self.model.aclose()


@dataclass
class _State:
    index: int
    actor: Any
    pid: int = 0
    up: bool = True
    in_flight: int = 0
    calls: int = 0
    seconds: float = 0.0
    restarts: int = 0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ModelSpecError("--ray: ray is not installed; pip install 'cai[ray]'") from None
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Join the cluster at ``address`` ("local": start one in this process, "auto": the one
    ``ray start`` runs on this node, else HOST:PORT or ray://HOST:PORT). True when this call
    started Ray here, so the pool shuts it down again. A process that already runs Ray keeps
    its cluster (Ray allows one per process)."""
    if ray.is_initialized():
        return False
    import logging

    address = address or "local"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if port.isdigit():  # Ray itself retries an unreachable address for minutes
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as exc:
            raise ModelSpecError(
                f"--ray {address}: no Ray cluster answers there ({exc}); start one with `ray start --head`"
            ) from None
    try:
        ray.init(
            address=address,
            include_dashboard=False if address == "local" else None,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ModelSpecError(f"--ray {address}: cannot join a Ray cluster: {exc}") from None
    return True


class RayPool(ChatModel):
    """``len(replica_options)`` replicas of ``spec``; replica i is built with
    ``load_model(spec, **replica_options[i])``. ``spec`` is the inner model's, so call keys
    (and a run's cache) are the same as with the model in one process.

    ``num_gpus`` / ``num_cpus``: Ray resources per replica. ``ready_timeout``: seconds to wait
    for every replica's model to load (a cluster that lacks the resources asked never starts
    them). ``max_failovers``: times one call moves to another replica after its replica died
    before it fails as ``TransientModelError(reason="replica_died")`` (a rerun retries it).
    """

    def __init__(
        self,
        spec: str,
        replica_options: Sequence[dict[str, Any]],
        *,
        address: str = "local",
        num_gpus: float | None = None,
        num_cpus: float | None = None,
        ready_timeout: float = 600.0,
        max_failovers: int = 8,
    ):
        if not replica_options:
            raise ModelSpecError("replicas: must be >= 1")
        self.spec = spec
        self.max_failovers = max_failovers
        self._ray = _import_ray()
        self._started_ray = _connect(self._ray, address)
        resources: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0}
        if num_gpus is not None:
            resources["num_gpus"] = num_gpus
        if num_cpus is not None:
            resources["num_cpus"] = num_cpus
        actor_class = self._ray.remote(_Replica).options(**resources)
        self._replicas = [
            _State(i, actor_class.remote(spec, dict(options))) for i, options in enumerate(replica_options)
        ]
        self._sticky: OrderedDict[str, int] = OrderedDict()
        self._wake: asyncio.Event | None = None
        self._revivers: set[asyncio.Task[None]] = set()
        self._first_call: float | None = None
        self._closed = False
        try:
            infos = self._ray.get([r.actor.info.remote() for r in self._replicas], timeout=ready_timeout)
        except self._ray.exceptions.GetTimeoutError:
            self._shutdown()
            raise TransientModelError(
                f"{spec}: {len(self._replicas)} replicas did not start within {ready_timeout:.0f} s; "
                f"does the cluster have the resources asked (num_gpus={num_gpus}, num_cpus={num_cpus}) free?",
                reason="replica_start",
            ) from None
        except self._ray.exceptions.RayError as exc:
            self._shutdown()
            raise ModelSpecError(f"{spec}: a replica failed to load its model: {_cause(exc)}") from None
        for state, info in zip(self._replicas, infos):
            state.pid = info["pid"]
        self._capabilities: Capabilities = infos[0]["capabilities"]
        self._counts_tokens: bool = infos[0]["counts_tokens"]

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def replicas(self) -> int:
        return len(self._replicas)

    # -- routing ---------------------------------------------------------------------------

    @staticmethod
    def _route_key(messages: Sequence[Message]) -> str:
        from cai.store import current_sample

        sample = current_sample()
        if sample is not None:
            return f"sample:{sample}"
        first = next((m for m in messages if m.get("role") == "user"), messages[0] if messages else {})
        return "first:" + hashlib.sha256(json.dumps(first, sort_keys=True).encode()).hexdigest()

    async def _pick(self, key: str) -> _State:
        index = self._sticky.get(key)
        if index is not None and self._replicas[index].up:
            self._sticky.move_to_end(key)
            return self._replicas[index]
        while not any(r.up for r in self._replicas):  # every replica is restarting
            wake = self._event()
            wake.clear()
            await wake.wait()
        state = min((r for r in self._replicas if r.up), key=lambda r: (r.in_flight, r.index))
        self._sticky[key] = state.index
        if len(self._sticky) > _STICKY_MAX:
            self._sticky.popitem(last=False)
        return state

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def _down(self, state: _State) -> None:
        """The replica's process died: its samples move to the others until Ray has
        restarted it (a background task waits for that)."""
        if not state.up:
            return
        state.up = False
        state.restarts += 1
        for key in [k for k, i in self._sticky.items() if i == state.index]:
            del self._sticky[key]
        task = asyncio.get_running_loop().create_task(self._revive(state))
        self._revivers.add(task)
        task.add_done_callback(self._revivers.discard)

    async def _revive(self, state: _State) -> None:
        while not self._closed:
            try:
                info = await state.actor.info.remote()
            except self._ray.exceptions.RayActorError:
                await asyncio.sleep(0.5)
                continue
            state.pid, state.up = info["pid"], True
            self._event().set()
            return

    # -- calls -----------------------------------------------------------------------------

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = params or GenParams()
        key = self._route_key(messages)
        payload = [dict(m) for m in messages]
        if self._first_call is None:
            self._first_call = time.monotonic()
        for _ in range(self.max_failovers + 1):
            state = await self._pick(key)
            state.in_flight += 1
            start = time.monotonic()
            try:
                result = await state.actor.chat.remote(payload, params)
            except self._ray.exceptions.RayActorError:
                self._down(state)
                continue
            finally:
                state.in_flight -= 1
            state.calls += 1
            state.seconds += time.monotonic() - start
            if isinstance(result, BaseException):
                raise result
            return result
        raise TransientModelError(
            f"{self.spec}: the replica serving this sample died {self.max_failovers + 1} times; "
            "rerun the same command to retry it",
            reason="replica_died",
        )

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        if not self._counts_tokens:
            return None
        payload = [dict(m) for m in messages]
        for state in sorted(self._replicas, key=lambda r: (not r.up, r.in_flight, r.index)):
            try:
                count: int | None = self._ray.get(state.actor.count_tokens.remote(payload), timeout=60)
                return count
            except self._ray.exceptions.RayError:
                continue
        return None

    # -- stats and lifecycle ---------------------------------------------------------------

    def replica_stats(self) -> list[dict[str, Any]]:
        """Per replica: calls finished, seconds spent in them, calls/s over the pool's time
        since its first call, restarts seen, calls in flight, up, worker pid."""
        elapsed = time.monotonic() - self._first_call if self._first_call is not None else 0.0
        return [
            {
                "replica": r.index,
                "calls": r.calls,
                "seconds": round(r.seconds, 3),
                "calls_per_s": round(r.calls / elapsed, 3) if elapsed > 0 else 0.0,
                "restarts": r.restarts,
                "in_flight": r.in_flight,
                "up": r.up,
                "pid": r.pid,
            }
            for r in self._replicas
        ]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._revivers):
            task.cancel()
        _closed_stats.append((self.spec, self.replica_stats()))
        closing = [r.actor.aclose.remote() for r in self._replicas if r.up]
        try:
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), timeout=30)
        except asyncio.TimeoutError:
            pass
        self._shutdown()

    def _shutdown(self) -> None:
        for state in self._replicas:
            self._ray.kill(state.actor, no_restart=True)
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False


def _cause(exc: BaseException) -> str:
    """The last line of the replica's error (Ray's messages carry the whole traceback)."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip()) if lines else type(cause).__name__


def pop_stats() -> list[tuple[str, list[dict[str, Any]]]]:
    """(spec, replica_stats) of every pool closed in this process since the last call."""
    stats = list(_closed_stats)
    _closed_stats.clear()
    return stats


def stats_table(spec: str, stats: list[dict[str, Any]]) -> Any:
    """A rich Table of one pool's ``replica_stats()``."""
    from rich.table import Table

    table = Table(title=f"{spec}: replicas")
    for name in ("replica", "calls", "seconds", "calls/s", "restarts"):
        table.add_column(name, justify="right")
    for row in stats:
        table.add_row(
            str(row["replica"]),
            str(row["calls"]),
            f"{row['seconds']:.1f}",
            f"{row['calls_per_s']:.2f}",
            str(row["restarts"]),
        )
    return table


def load_pool(spec: str, **options: Any) -> RayPool:
    """A ``RayPool`` from ``load_model`` options: ``replicas`` (int >= 1), ``ray`` (address,
    "auto" or "local", the default), ``base_urls`` (one replica per URL, each with its own
    ``base_url``), ``replica_options`` (a list of per-replica option overrides), ``num_gpus`` (default 1
    for ``vllm:``, ``tensor_parallel_size`` when given), ``num_cpus``, ``ready_timeout``; every
    other option goes to each replica's model."""
    pool = {k: options.pop(k) for k in POOL_OPTIONS if k in options}
    urls = list(pool.get("base_urls") or [])
    overrides = [dict(o) for o in pool.get("replica_options") or []] or [{"base_url": u} for u in urls]
    if urls and pool.get("replica_options"):
        raise ModelSpecError("base_urls and replica_options: give one of them")
    replicas = pool.get("replicas", len(overrides) or 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ModelSpecError(f"replicas: must be >= 1 (got {replicas!r})")
    if overrides and replicas != len(overrides):
        what = "base_urls" if urls else "replica_options"
        raise ModelSpecError(
            f"replicas: {replicas} given but {what} has {len(overrides)} entries; give one per replica"
        )
    per_replica = [{**options, **(overrides[i] if overrides else {})} for i in range(replicas)]
    num_gpus = pool.get("num_gpus")
    if num_gpus is None and spec.startswith("vllm:"):  # an in-process engine needs its GPUs reserved
        num_gpus = float(options.get("tensor_parallel_size", 1))
    return RayPool(
        spec,
        per_replica,
        address=str(pool.get("ray") or "local"),
        num_gpus=num_gpus,
        num_cpus=pool.get("num_cpus"),
        ready_timeout=float(pool.get("ready_timeout", 600.0)),
    )
