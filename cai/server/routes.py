"""HTTP routes: OpenAI chat completions and models, health, metrics (judge routes: judge_routes)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cai.models.base import ContextLengthError, ModelError, PermanentModelError
from cai.server.app import ServerState, require, state_of
from cai.server.errors import APIError
from cai.server.openai_api import ChatRequest, completion_body, new_id, sse_chunks
from cai.wrapper import WrappedCompletion

router = APIRouter()
T = TypeVar("T")


async def _bounded(state: ServerState, work: Awaitable[T]) -> T:
    """Per-request timeout (504) and upstream failures (502; 400 for a too-long context)."""
    timeout = state.config.limits.request_timeout_s
    try:
        return await asyncio.wait_for(work, timeout)
    except asyncio.TimeoutError:
        state.metrics.upstream_errors.labels("timeout").inc()
        raise APIError(504, f"request took longer than {timeout:g} s", code="timeout") from None
    except ContextLengthError as exc:
        raise APIError(400, f"context too long for the upstream model: {exc}", code="context_length_exceeded")
    except ModelError as exc:
        state.metrics.upstream_errors.labels(exc.reason).inc()
        raise APIError(502, f"upstream model failed ({exc.reason}): {exc}", code="upstream_error") from None


def _record(state: ServerState, reply: WrappedCompletion) -> None:
    m, trace = state.metrics, reply.trace
    if trace is None:
        return
    for stage in trace.metadata.get("stages", []):
        m.stage.labels(stage["stage"]).observe(stage["seconds"])
    m.tokens.labels("prompt").inc(reply.usage.prompt_tokens)
    m.tokens.labels("completion").inc(reply.usage.completion_tokens)
    if trace.steps:
        m.revisions.inc(len(trace.steps))
    action = trace.metadata.get("action")
    if action == "blocked":
        m.blocks.inc()
    elif action == "revised":
        m.revised.inc()


@router.post("/v1/chat/completions", dependencies=[Depends(require("chat"))])
async def chat_completions(body: ChatRequest, request: Request) -> Response:
    state = state_of(request)
    if body.model != state.config.served_model_name:
        raise APIError(404, f"model {body.model!r} not found; this server serves "
                            f"{state.config.served_model_name!r}", code="model_not_found", param="model")
    try:
        messages = body.chat_messages()
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_request", param="messages") from None
    reply = await _bounded(state, state.wrapper.chat(messages, body.gen_params()))
    _record(state, reply)
    trace = reply.trace.to_dict() if body.cai.trace and reply.trace is not None else None
    cid, name = new_id(), state.config.served_model_name
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = sse_chunks(cid, name, reply.text, reply.finish_reason, reply.usage, trace, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})
    return JSONResponse(completion_body(cid, name, reply.text, reply.finish_reason, reply.usage, trace))


@router.get("/v1/models", dependencies=[Depends(require("models"))])
async def list_models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {"object": "list", "data": [{
        "id": state.config.served_model_name, "object": "model", "created": 0, "owned_by": "cai",
    }]}


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {"status": "ok", "model": state.config.served_model_name, "upstream": state.wrapper.model.spec,
            "mode": state.wrapper.mode, "in_flight": state.in_flight}


@router.get("/metrics", dependencies=[Depends(require("metrics"))])
async def metrics(request: Request) -> Response:
    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
