"""Running coroutines from synchronous code: the one sync-over-async helper.

- ``new_loop()``: a fresh event loop, uvloop's where it is installed (``CAI_UVLOOP=0`` turns it off).
- ``run_sync(coro)``: run a coroutine to completion and return its result (``asyncio.run`` on
  ``new_loop``; the CLI's commands run through it). With no loop running in this thread it
  runs on a fresh loop; inside a running loop (Jupyter, an async caller) it
  runs on a helper thread with its own loop, so the caller's loop is never re-entered.
- ``BackgroundLoop``: one daemon thread running one loop for the life of an object (clients whose
  connections belong to a loop, sync APIs called many times); ``submit(coro)`` blocks for the
  result, ``close()`` stops the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when installed (several times less CPU per socket event)."""
    if os.environ.get("CAI_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _run_on_new_loop(coro: Coroutine[Any, Any, T]) -> T:
    # asyncio.Runner as asyncio.run: Ctrl-C cancels the coroutine (its finally blocks and
    # context managers run, so a run's store commits) before KeyboardInterrupt propagates
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code (see the module doc)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_on_new_loop(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cai-run-sync") as pool:
        return pool.submit(_run_on_new_loop, coro).result()


class BackgroundLoop:
    """A daemon thread running one event loop; ``submit`` runs a coroutine there and blocks.

    Must not be called from its own loop's thread (that would deadlock: ``submit`` raises).
    """

    def __init__(self, name: str = "cai-loop"):
        self.loop = new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BackgroundLoop.submit called from its own loop's thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and join the thread (idempotent)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> BackgroundLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
