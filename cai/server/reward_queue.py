"""Concurrent /v1/reward requests gathered into batched ``score_many`` judge calls.

OpenRLHF sends one item per request, hundreds at once. Refusing them (429) loses rewards, and
one judge call per request defeats the judge's batching. Requests instead wait in one bounded
queue; a worker takes everything waiting (up to ``max_batch`` items) as one ``score_many``
call, while newer requests queue for the next one. Only a full queue refuses (503).

``cai.models.batching.MicroBatcher`` does not fit here: it runs a synchronous batch function
on its own thread, while judges are async and bound to the server's event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from cai.server.chat_markup import Markup, markup_from_tokenizer
from cai.server.config import ConfigError, ServeConfig


class QueueFull(Exception):
    pass


def unscored_reward(judge: Any, configured: float | None) -> float:
    """What an item the judge could not score is rewarded: the configured value, else the
    judge's worst reward (from its ``scale``); a judge without a known scale needs a value."""
    worst = configured if configured is not None else judge.worst_reward()
    if worst is None:
        raise ConfigError(
            f"judge.unscored_reward: the pointwise judge {judge.name!r} has no known worst score; "
            "set judge.unscored_reward to the reward an unscored item gets"
        )
    return worst


def load_markup(tokenizer: str) -> Markup:
    """The chat markup of a local HF tokenizer folder (``embedded``: the embedded model's)."""
    from transformers import AutoTokenizer

    from cai.models.embedded import export_embedded

    path = str(export_embedded()) if tokenizer == "embedded" else tokenizer
    try:
        return markup_from_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"judge.tokenizer: cannot use {tokenizer!r}: {exc}") from None


class RewardQueue:
    def __init__(self, judge: Any, *, max_batch: int, max_queue: int, concurrency: int, window_s: float = 0.002):
        self.judge = judge
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.concurrency = concurrency
        self.window_s = window_s
        self.batch_sizes: list[int] = []  # items per judge call, for tests and metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task | None = None
        self.unscored: float | None = None
        self.markup: Markup | None = None

    @classmethod
    def for_config(cls, judge: Any, config: ServeConfig) -> RewardQueue:
        """The queue with what /v1/reward reads from the config: ``unscored`` (the reward an
        unscored item gets) and ``markup`` (how templated OpenRLHF queries are split)."""
        j = config.judge
        queue = cls(judge, max_batch=config.limits.max_batch, max_queue=j.max_queue, concurrency=j.concurrency)
        queue.unscored = unscored_reward(judge, j.unscored_reward)
        queue.markup = load_markup(j.tokenizer) if j.tokenizer else None
        return queue

    @property
    def waiting(self) -> int:
        return len(self._pending) if self._loop is not None else 0

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        # lazily, on the server's loop (the app may be built before its loop exists)
        self._loop = loop
        self._pending: deque[tuple[tuple[Any, str], asyncio.Future]] = deque()
        self._wake = asyncio.Event()
        self._worker = None

    async def score(self, pairs: Sequence[tuple[Any, str]]) -> list[Any]:
        """Scores for (prompt, response) pairs, in order; ``QueueFull`` when they do not fit."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._bind(loop)
        if len(self._pending) + len(pairs) > self.max_queue:
            raise QueueFull(
                f"the reward queue is full ({len(self._pending)} items waiting, "
                f"limit judge.max_queue={self.max_queue}); retry shortly"
            )
        futures = [loop.create_future() for _ in pairs]
        self._pending.extend(zip(pairs, futures))
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name="cai-reward-queue")
        # a caller that times out cancels its futures; the worker skips them
        return list(await asyncio.gather(*futures))

    def _take(self) -> list[tuple[tuple[Any, str], asyncio.Future]]:
        batch: list[tuple[tuple[Any, str], asyncio.Future]] = []
        while self._pending and len(batch) < self.max_batch:
            item, future = self._pending.popleft()
            if not future.done():
                batch.append((item, future))
        if not self._pending:
            self._wake.clear()
        return batch

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.window_s)  # requests sent together arrive a little apart
            batch = self._take()
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                scores = await self.judge.score_many([item for item, _ in batch], concurrency=self.concurrency)
            except Exception as exc:  # every waiting caller gets the judge's error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), score in zip(batch, scores):
                    if not future.done():
                        future.set_result(score)

    async def aclose(self) -> None:
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
            for _, future in self._pending:
                future.cancel()
