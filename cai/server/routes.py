"""HTTP routes: OpenAI chat completions and models, health, metrics (judge routes: judge_routes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cai.models.base import ContextLengthError, ModelError, Usage
from cai.models.openai_compat import RemoteChatModel, map_error
from cai.server.app import ServerState, require, state_of
from cai.server.errors import APIError
from cai.server.openai_api import (
    ChatRequest,
    Choice,
    choices_of,
    completion_body,
    fingerprint,
    logprobs_body,
    new_id,
    sse_chunks,
    usage_body,
)
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
        raise APIError(400, f"context too long for the upstream model: {exc}", code="context_length_exceeded") from None
    except ModelError as exc:
        state.metrics.upstream_errors.labels(exc.reason).inc()
        # the reason only: upstream error bodies can quote credentials or internal hosts
        raise APIError(502, f"upstream model failed ({exc.reason})", code="upstream_error") from None


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
    wrapper, name = state.wrapper, state.config.served_model_name
    if body.model != name:
        raise APIError(
            404, f"model {body.model!r} not found; this server serves {name!r}", code="model_not_found", param="model"
        )
    try:
        messages = body.chat_messages()
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_request", param="messages") from None
    fp = fingerprint(wrapper.spec, wrapper.mode, wrapper.constitution.id)
    upstream_only = body.upstream_only()
    if upstream_only:
        choices, usage = await _bounded(state, _forward(state, body, upstream_only[0]))
        trace = None
    else:
        if body.logprobs and (wrapper.mode != "off" or not wrapper.model.capabilities.logprobs):
            why = (
                f"log-probs of the upstream's first answer do not describe a {wrapper.mode}-mode answer"
                if wrapper.mode != "off"
                else f"the upstream {wrapper.model.spec} gives no log-probs"
            )
            raise APIError(
                400, f"logprobs is not supported here: {why}", code="unsupported_parameter", param="logprobs"
            )
        params = body.gen_params()
        # n independent answers (each through the whole loop); a seed gives each its own
        runs = [params if params.seed is None else params.replace(seed=params.seed + i) for i in range(body.n)]
        replies = await _bounded(state, asyncio.gather(*(wrapper.chat(messages, p) for p in runs)))
        for reply in replies:
            _record(state, reply)
        choices = [Choice(r.text, r.finish_reason, logprobs_body(r.logprobs)) for r in replies]
        usage = usage_body(sum((r.usage for r in replies), Usage()))
        traces = [r.trace.to_dict() if r.trace is not None else None for r in replies]
        trace = (traces[0] if body.n == 1 else traces) if body.cai.trace else None
    cid = new_id()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = sse_chunks(cid, name, choices, usage, fp, trace, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    return JSONResponse(completion_body(cid, name, choices, usage, fp, trace))


async def _forward(state: ServerState, body: ChatRequest, field: str) -> tuple[list[Choice], dict[str, int]]:
    """Mode ``off``: send a request with fields the loop cannot honour (tools, response_format,
    ...) to an OpenAI-compatible upstream as it is, under the upstream's retry policy."""
    wrapper = state.wrapper
    if wrapper.mode != "off":
        raise APIError(
            400,
            f"{field} is not supported in mode {wrapper.mode!r}: the constitution revises "
            "plain text answers; serve this model in mode off to pass it to the upstream",
            code="unsupported_parameter",
            param=field,
        )
    upstream = wrapper.model
    if not isinstance(upstream, RemoteChatModel):
        raise APIError(
            400,
            f"{field} needs an OpenAI-compatible upstream (openai: or litellm:); this "
            f"server's upstream is {upstream.spec}",
            code="unsupported_parameter",
            param=field,
        )

    async def call() -> dict[str, Any]:
        try:
            response = await upstream._create(body.upstream_body(upstream.model))
        except (asyncio.CancelledError, asyncio.TimeoutError):
            raise
        except Exception as exc:
            raise map_error(exc) from exc
        return response if isinstance(response, dict) else response.model_dump()

    data = await upstream.policy.run(call)
    usage = data.get("usage") or {}
    return choices_of(data), usage_body(
        Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    )


@router.get("/v1/models", dependencies=[Depends(require("models"))])
async def list_models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {
        "object": "list",
        "data": [
            {
                "id": state.config.served_model_name,
                "object": "model",
                "created": 0,
                "owned_by": "cai",
            }
        ],
    }


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {
        "status": "ok",
        "model": state.config.served_model_name,
        "upstream": state.wrapper.model.spec,
        "mode": state.wrapper.mode,
        "in_flight": state.in_flight,
    }


@router.get("/metrics", dependencies=[Depends(require("metrics"))])
async def metrics(request: Request) -> Response:
    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
