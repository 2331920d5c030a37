"""How remote backends call out: bounded concurrency, requests/min and tokens/min limits,
a per-request deadline, and retries of transient errors only (exponential backoff with
jitter, honouring the server's Retry-After). Shared by the openai and litellm backends.

The limiters use a thread lock and ``time.monotonic``, not asyncio primitives, so one model
object can be used from several event loops (e.g. pytest's per-test loops) and threads.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from cai.models.base import TransientModelError

T = TypeVar("T")


class RateLimiter:
    """A token bucket of ``per_minute`` units refilling continuously, with a small burst.

    ``acquire(cost)`` reserves ``cost`` units and sleeps until they are covered; costs larger
    than the bucket just wait longer (the bucket goes into debt).
    """

    def __init__(self, per_minute: float, *, burst_seconds: float = 1.0):
        if per_minute <= 0:
            raise ValueError("rate limit must be > 0 per minute")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _reserve(self, cost: float) -> float:
        with self._lock:
            now = time.monotonic()
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
            self._stamp = now
            self._level -= cost
            return 0.0 if self._level >= 0 else -self._level / self.rate

    async def acquire(self, cost: float = 1.0) -> None:
        delay = self._reserve(cost)
        if delay > 0:
            await asyncio.sleep(delay)

    def refund(self, amount: float) -> None:
        """Give back units reserved but not used (e.g. estimated tokens above actual usage)."""
        with self._lock:
            self._level = min(self.capacity, self._level + amount)


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0  # never sleep longer than this on a server's say-so


def backoff_delay(config: RetryConfig, exc: BaseException | None, failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed attempt: the server's Retry-After when
    it sent one, else exponential backoff with jitter (50-100% of the nominal delay)."""
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        return min(max(0.0, retry_after), config.retry_after_max)
    backoff = min(config.backoff_max, config.backoff_initial * 2 ** (failures - 1))
    return backoff * (0.5 + random.random() / 2)


async def _with_deadline(call: Callable[[], Awaitable[T]], seconds: float) -> T:
    if hasattr(asyncio, "timeout"):  # 3.11+: no extra task per call, unlike wait_for
        async with asyncio.timeout(seconds):
            return await call()
    return await asyncio.wait_for(call(), seconds)


class CallPolicy:
    """Run one remote call under the limits, deadline and retry rules."""

    def __init__(
        self,
        *,
        max_concurrency: int = 32,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout: float = 120.0,
        retry: RetryConfig = RetryConfig(),
    ):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.max_concurrency = max_concurrency
        self.requests = RateLimiter(rpm) if rpm else None
        self.tokens = RateLimiter(tpm) if tpm else None
        self.timeout = timeout
        self.retry = retry
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = self._semaphores[loop] = asyncio.Semaphore(self.max_concurrency)
        return sem

    async def _attempt(self, call: Callable[[], Awaitable[T]], token_cost: int) -> T:
        async with self._semaphore():
            if self.requests:
                await self.requests.acquire(1)
            if self.tokens and token_cost:
                await self.tokens.acquire(token_cost)
            try:
                return await _with_deadline(call, self.timeout)
            except asyncio.TimeoutError as exc:
                raise TransientModelError(f"no response within {self.timeout:g}s", reason="timeout") from exc

    async def run(self, call: Callable[[], Awaitable[T]], *, token_cost: int = 0) -> T:
        """``call`` must raise cai ModelErrors (map backend errors inside it)."""
        try:  # the common case, without the retry machinery's per-call cost
            return await self._attempt(call, token_cost)
        except TransientModelError as exc:
            if self.retry.max_retries < 1:
                raise
            await asyncio.sleep(backoff_delay(self.retry, exc, 1))

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return backoff_delay(self.retry, exc, state.attempt_number + 1)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientModelError),
            stop=stop_after_attempt(self.retry.max_retries),
            wait=wait,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(call, token_cost)
        raise AssertionError("unreachable")  # pragma: no cover

    def used_tokens(self, estimated: int, actual: int) -> None:
        """Correct the tokens/min bucket once the real usage is known."""
        if self.tokens and estimated > actual:
            self.tokens.refund(estimated - actual)
