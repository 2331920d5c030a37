"""HTTP routes: OpenAI chat completions and models, judge, reward, health, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator

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


# ---- judges -----------------------------------------------------------------------------

Prompt = str | list[dict[str, str]]


class JudgeItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    response: str | None = None  # pointwise
    a: str | None = None  # pairwise
    b: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "JudgeItem":
        pairwise = self.a is not None or self.b is not None
        if pairwise == (self.response is not None) or (pairwise and (self.a is None or self.b is None)):
            raise ValueError("give either 'response' (pointwise) or both 'a' and 'b' (pairwise)")
        return self


class JudgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[JudgeItem] = Field(min_length=1)


def _judge(state: ServerState, kind: str) -> Any:
    judge = state.pairwise if kind == "pairwise" else state.pointwise
    if judge is None:
        raise APIError(404, f"no {kind} judge configured on this server (config judge.{kind})",
                       code="judge_not_configured")
    return judge


def _check_batch(state: ServerState, n: int) -> None:
    if n > state.config.limits.max_batch:
        raise APIError(413, f"{n} items exceed the batch limit of {state.config.limits.max_batch}",
                       code="batch_too_large")


async def _nothing() -> list:
    return []


@router.post("/v1/judge", dependencies=[Depends(require("judge"))])
async def judge(request: Request) -> dict[str, Any]:
    """Body: one item ({"prompt", "response"} or {"prompt", "a", "b"}) or {"items": [...]}."""
    state = state_of(request)
    try:
        raw = await request.json()
        single = isinstance(raw, dict) and "items" not in raw
        req = JudgeRequest.model_validate({"items": [raw]} if single else raw)
    except ValueError as exc:  # bad JSON or a pydantic ValidationError
        raise APIError(400, f"invalid judge request: {exc}", code="invalid_request") from None
    _check_batch(state, len(req.items))
    conc = state.config.judge.concurrency
    pairs = [(i, it) for i, it in enumerate(req.items) if it.a is not None]
    points = [(i, it) for i, it in enumerate(req.items) if it.a is None]
    pair_job = (_judge(state, "pairwise").compare_many([(it.prompt, it.a, it.b) for _, it in pairs],
                                                       concurrency=conc) if pairs else _nothing())
    point_job = (_judge(state, "pointwise").score_many([(it.prompt, it.response) for _, it in points],
                                                       concurrency=conc) if points else _nothing())
    pair_out, point_out = await _bounded(state, asyncio.gather(pair_job, point_job))
    results: list[dict[str, Any]] = [{} for _ in req.items]
    for kind, group, out in (("pairwise", pairs, pair_out), ("pointwise", points, point_out)):
        for (i, _), verdict in zip(group, out):
            results[i] = {"index": i, "type": kind, **verdict.to_dict()}
    return {"object": "cai.judgement", "results": results}


class RewardItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    response: str


class RewardRequest(BaseModel):
    """Either cai's shape {"items": [{"prompt", "response"}]} or OpenRLHF's remote reward
    shape {"query": [prompt+response, ...], "prompts": [...], "labels": [...]}."""

    model_config = ConfigDict(extra="allow")
    items: list[RewardItem] | None = None
    query: list[str] | None = None
    prompts: list[str] | None = None
    labels: list[Any] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> "RewardRequest":
        if (self.items is None) == (self.query is None):
            raise ValueError("give either 'items' or OpenRLHF's 'query' (with optional 'prompts')")
        if self.query is not None and self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(f"'prompts' has {len(self.prompts)} entries, 'query' has {len(self.query)}")
        return self

    def pairs(self) -> list[tuple[Prompt, str]]:
        if self.items is not None:
            return [(it.prompt, it.response) for it in self.items]
        pairs: list[tuple[Prompt, str]] = []
        for i, query in enumerate(self.query or []):
            prompt = self.prompts[i] if self.prompts is not None else ""
            # OpenRLHF sends prompt + response as one string; the prompt is its prefix
            if prompt and query.startswith(prompt):
                pairs.append((prompt, query[len(prompt):]))
            else:
                pairs.append((prompt, query))
        return pairs


@router.post("/v1/reward", dependencies=[Depends(require("reward"))])
async def reward(body: RewardRequest, request: Request) -> dict[str, Any]:
    state = state_of(request)
    pairs = body.pairs()
    _check_batch(state, len(pairs))
    judge = _judge(state, "pointwise")
    cfg = state.config.judge
    start = time.perf_counter()
    scores = await _bounded(state, judge.score_many(pairs, concurrency=cfg.concurrency))
    state.metrics.stage.labels("reward").observe(time.perf_counter() - start)
    # as judges.trl does: the score, negated for lower-is-better judges (ViolationJudge)
    sign = 1.0 if getattr(judge, "higher_is_better", True) else -1.0
    rewards: list[float | None] = [sign * s.value if s.ok and s.value is not None else None for s in scores]
    unscored = sum(r is None for r in rewards)
    if body.query is not None:
        # OpenRLHF turns rewards into a tensor: unscored items get the configured fill value
        rewards = [cfg.unscored_reward if r is None else r for r in rewards]
    return {
        "rewards": rewards,
        "scores": [s.to_dict() for s in scores],
        "extra_logs": {"unscored": unscored},
    }
