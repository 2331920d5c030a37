"""The ASGI guard in front of every route: request metrics, and for /v1 routes the API key,
the body's size and deadline, and the in-flight bound, all before the app parses anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cai.server.errors import error_bytes
from cai.server.state import ServerState

ROUTE_OF_PATH = {
    "/v1/chat/completions": "chat",
    "/v1/models": "models",
    "/v1/judge": "judge",
    "/v1/reward": "reward",
    "/metrics": "metrics",
    "/healthz": "healthz",
}


class GuardMiddleware:
    """Pure ASGI: request metrics, then for every /v1 route: the API key (before anything is
    parsed), the body-size bound (413), the body-read deadline (408; a slow client never holds
    a slot), and the in-flight bound (429), taken only once the whole body is in."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app = app
        self.state = state

    async def _reject(self, send: Send, status: int, message: str, code: str, headers=()) -> None:
        body = error_bytes(status, message, code)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, metrics = self.state, self.state.metrics
        route = ROUTE_OF_PATH.get(scope["path"], "other")
        start = time.perf_counter()
        status_box = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        async def reject(status: int, message: str, code: str, reason: str, headers=()) -> None:
            metrics.rejected.labels(reason).inc()
            status_box[0] = status
            await self._reject(send, status, message, code, headers)

        try:
            if not scope["path"].startswith("/v1/"):
                return await self.app(scope, receive, send_status)
            denied = state.auth_problem(route, dict(scope["headers"]).get(b"authorization", b"").decode("latin-1"))
            if denied is not None:
                reason = "forbidden" if denied.status == 403 else "unauthenticated"
                return await reject(
                    denied.status,
                    denied.message,
                    denied.code or "",
                    reason,
                    [(k.encode(), v.encode()) for k, v in (denied.headers or {}).items()],
                )
            limits = state.config.limits
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
                return await reject(
                    413, f"request body exceeds {limits.max_body_bytes} bytes", "body_too_large", "body_too_large"
                )
            try:
                body = await _read_body(receive, limits.max_body_bytes, limits.body_timeout_s)
            except _BodyTooLarge:
                return await reject(
                    413, f"request body exceeds {limits.max_body_bytes} bytes", "body_too_large", "body_too_large"
                )
            except asyncio.TimeoutError:
                return await reject(
                    408,
                    f"request body not received within {limits.body_timeout_s:g} s",
                    "body_timeout",
                    "body_timeout",
                    [(b"connection", b"close")],
                )
            if body is None:  # the client went away
                return None
            counted = route != "reward"  # reward requests wait in their own bounded queue (503 when full)
            if counted and state.in_flight >= limits.max_concurrency:
                return await reject(
                    429,
                    "server is at its concurrency limit; retry shortly",
                    "overloaded",
                    "overloaded",
                    [(b"retry-after", b"1")],
                )
            state.in_flight += counted
            metrics.in_flight.inc(counted)
            try:
                await self.app(scope, _replay(body, receive), send_status)
            finally:
                state.in_flight -= counted
                metrics.in_flight.dec(counted)
        finally:
            metrics.requests.labels(route, str(status_box[0])).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - start)


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int, seconds: float) -> bytes | None:
    """The whole request body within ``seconds`` and ``limit`` bytes (chunked bodies have no
    Content-Length); None when the client disconnected."""

    async def read() -> bytes | None:
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                raise _BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    return await asyncio.wait_for(read(), seconds)


def _replay(body: bytes, receive: Receive) -> Callable[[], Any]:
    """The app's receive: the body already read, then the connection's own messages
    (a disconnect, for streaming responses)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
