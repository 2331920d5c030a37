"""The FastAPI app factory: upstream model + constitutional wrapper + judges behind auth,
limits and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cai.models.base import ChatModel
from cai.server.auth import KeyStore
from cai.server.config import ServeConfig
from cai.server.errors import AnswerErrors, APIError, error_bytes, install_error_handlers
from cai.server.metrics import Metrics
from cai.wrapper import ConstitutionalWrapper

ROUTE_OF_PATH = {
    "/v1/chat/completions": "chat",
    "/v1/models": "models",
    "/v1/judge": "judge",
    "/v1/reward": "reward",
    "/metrics": "metrics",
    "/healthz": "healthz",
}


@dataclass
class ServerState:
    config: ServeConfig
    wrapper: ConstitutionalWrapper
    keys: KeyStore
    metrics: Metrics
    pairwise: Any = None  # judges.PairwiseJudge for /v1/judge
    pointwise: Any = None  # judges.PointwiseJudge for /v1/judge and /v1/reward
    rewards: Any = None  # cai.server.reward_queue.RewardQueue over the pointwise judge
    in_flight: int = 0


def _load_judge(spec: str, options: dict[str, Any], upstream: ChatModel | None = None) -> Any:
    """A judge from its spec; a judge whose model is the upstream's spec shares that model
    instead of loading a second copy."""
    from judges import load_judge  # surfaces may import judges lazily

    _, _, model_spec = spec.partition(":")
    if upstream is not None and model_spec and model_spec == upstream.spec:
        return load_judge(spec, model=upstream, **options)
    return load_judge(spec, **options)


def build_wrapper(config: ServeConfig, model: ChatModel | None = None) -> ConstitutionalWrapper:
    from cai.models import load_model

    upstream = model if model is not None else load_model(config.model.spec, **config.model.options)
    w = config.wrapper
    return ConstitutionalWrapper(
        upstream,
        w.constitution,
        mode=w.mode,
        revisions=w.revisions,
        judges=[_load_judge(spec, w.judge_options, upstream) for spec in w.judges],
        threshold=w.threshold,
        refusal=w.refusal,
        seed=w.seed,
        few_shot=w.few_shot,
    )


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
            denied = key_problem(state, route, dict(scope["headers"]).get(b"authorization", b"").decode("latin-1"))
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


def create_app(
    config: ServeConfig,
    *,
    model: ChatModel | None = None,
    wrapper: ConstitutionalWrapper | None = None,
    pairwise: Any = None,
    pointwise: Any = None,
) -> FastAPI:
    """Build the app. ``model``/``wrapper``/judges override what the config would load
    (for tests and for embedding the app in a Python program)."""
    from cai.server.judge_routes import router as judge_router
    from cai.server.routes import router

    j = config.judge
    keys = KeyStore.from_config(config.auth)  # before loading models: config errors first
    wrapper = wrapper or build_wrapper(config, model)
    up = wrapper.model
    state = ServerState(
        config=config,
        wrapper=wrapper,
        keys=keys,
        metrics=Metrics(),
        pairwise=pairwise if pairwise is not None else (j.pairwise and _load_judge(j.pairwise, j.options, up)),
        pointwise=pointwise if pointwise is not None else (j.pointwise and _load_judge(j.pointwise, j.options, up)),
    )
    if state.pointwise is not None:
        from cai.server.reward_queue import RewardQueue

        state.rewards = RewardQueue.for_config(state.pointwise, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if state.rewards is not None:
            await state.rewards.aclose()
        for judge in (state.pairwise, state.pointwise, *state.wrapper.judges):
            if judge is not None and hasattr(judge, "aclose"):
                await judge.aclose()
        await state.wrapper.aclose()

    # no schema endpoint: it would be served without a key
    app = FastAPI(title="cai serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cai = state
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(judge_router)
    app.add_middleware(AnswerErrors)  # inside GuardMiddleware, which counts the 500
    app.add_middleware(GuardMiddleware, state=state)
    return app


def state_of(request: Request) -> ServerState:
    return request.app.state.cai


def key_problem(state: ServerState, route: str, header: str) -> APIError | None:
    """Why an ``Authorization`` header may not call ``route`` (401/403), None when it may.
    ``route`` "other" (an unknown /v1 path) needs any valid key."""
    if not state.keys.enabled or (route == "metrics" and state.config.auth.public_metrics):
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return APIError(
            401,
            "missing bearer API key (Authorization: Bearer <key>)",
            code="invalid_api_key",
            headers={"www-authenticate": "Bearer"},
        )
    routes = state.keys.routes_for(token.strip())
    if routes is None:
        return APIError(401, "invalid API key", code="invalid_api_key", headers={"www-authenticate": "Bearer"})
    if route != "other" and route not in routes:
        return APIError(403, f"this API key may not call the {route!r} route", code="forbidden")
    return None


def require(route: str) -> Callable[[Request], None]:
    """Dependency: a bearer key allowed to call ``route`` (401 without/invalid, 403 not allowed);
    /v1 routes are also checked by ``GuardMiddleware`` before their body is read."""

    def check(request: Request) -> None:
        state = state_of(request)
        problem = key_problem(state, route, request.headers.get("authorization", ""))
        if problem is not None:
            state.metrics.rejected.labels("forbidden" if problem.status == 403 else "unauthenticated").inc()
            raise problem

    return check
