"""HTTP routes for judges: /v1/judge (pointwise and pairwise verdicts) and /v1/reward
(rewards for RL trainers: cai's own shape, OpenRLHF's remote reward shape)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.server.app import ServerState, require, state_of
from cai.server.chat_markup import Markup, split_query
from cai.server.errors import APIError
from cai.server.openai_api import ChatMessage
from cai.server.reward_queue import QueueFull
from cai.server.routes import _bounded

router = APIRouter()

Prompt = str | list[dict[str, Any]]  # as judges take it
PromptIn = str | list[ChatMessage]  # as clients send it: text, or a conversation (content parts allowed)


def as_prompt(prompt: PromptIn) -> Prompt:
    if isinstance(prompt, str):
        return prompt
    try:
        return [m.as_message() for m in prompt]
    except ValueError as exc:
        raise APIError(400, f"invalid prompt: {exc}", code="invalid_request", param="prompt") from None


class JudgeItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: PromptIn
    response: str | None = None  # pointwise
    a: str | None = None  # pairwise
    b: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> JudgeItem:
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
        raise APIError(
            404, f"no {kind} judge configured on this server (config judge.{kind})", code="judge_not_configured"
        )
    return judge


def _check_batch(state: ServerState, n: int) -> None:
    if n > state.config.limits.max_batch:
        raise APIError(
            413, f"{n} items exceed the batch limit of {state.config.limits.max_batch}", code="batch_too_large"
        )


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
    pair_job = (
        _judge(state, "pairwise").compare_many(
            [(as_prompt(it.prompt), it.a, it.b) for _, it in pairs], concurrency=conc
        )
        if pairs
        else _nothing()
    )
    point_job = (
        _judge(state, "pointwise").score_many(
            [(as_prompt(it.prompt), it.response) for _, it in points], concurrency=conc
        )
        if points
        else _nothing()
    )
    pair_out, point_out = await _bounded(state, asyncio.gather(pair_job, point_job))
    results: list[dict[str, Any]] = [{} for _ in req.items]
    for kind, group, out in (("pairwise", pairs, pair_out), ("pointwise", points, point_out)):
        for (i, _), verdict in zip(group, out):
            results[i] = {"index": i, "type": kind, **verdict.to_dict()}
    return {"object": "cai.judgement", "results": results}


class RewardItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: PromptIn
    response: str


class RewardRequest(BaseModel):
    """Either cai's shape {"items": [{"prompt", "response"}]} or OpenRLHF's remote reward
    shape {"query": [templated prompt + response, ...], "prompts": [...], "labels": [...]}."""

    model_config = ConfigDict(extra="allow")
    items: list[RewardItem] | None = None
    query: list[str] | None = None
    prompts: list[str] | None = None
    labels: list[Any] | None = None
    # unscored items get judge.unscored_reward instead of None (always so in OpenRLHF's shape)
    fill_unscored: bool = False

    @model_validator(mode="after")
    def _one_shape(self) -> RewardRequest:
        if (self.items is None) == (self.query is None):
            raise ValueError("give either 'items' or OpenRLHF's 'query' (with optional 'prompts')")
        if self.query is not None and self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(f"'prompts' has {len(self.prompts)} entries, 'query' has {len(self.query)}")
        return self

    def pairs(self, markup: Markup | None) -> list[tuple[Prompt, str]]:
        if self.items is not None:
            return [(as_prompt(it.prompt), it.response) for it in self.items]
        prompts = self.prompts or [None] * len(self.query or [])
        return [split_query(q, p, markup) for q, p in zip(self.query or [], prompts)]


@router.post("/v1/reward", dependencies=[Depends(require("reward"))])
async def reward(body: RewardRequest, request: Request) -> dict[str, Any]:
    """``rewards`` and ``scores`` are plain numbers per item (OpenRLHF tensors both; an item the
    judge could not score gets ``judge.unscored_reward`` there, None in cai's shape);
    ``extra_logs`` values are numbers per item; the judge's verdicts are under ``details``."""
    state = state_of(request)
    judge = _judge(state, "pointwise")
    queue = state.rewards
    pairs = body.pairs(queue.markup)
    _check_batch(state, len(pairs))
    start = time.perf_counter()
    try:
        scores = await _bounded(state, queue.score(pairs))
    except QueueFull as exc:
        state.metrics.rejected.labels("reward_queue_full").inc()
        raise APIError(503, str(exc), code="reward_queue_full", headers={"retry-after": "1"}) from None
    state.metrics.stage.labels("reward").observe(time.perf_counter() - start)
    rewards = [judge.reward(s) for s in scores]
    unscored = [float(r is None) for r in rewards]
    if body.query is not None or body.fill_unscored:
        rewards = [queue.unscored if r is None else r for r in rewards]
    return {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {"unscored": unscored},
        "details": [s.to_dict() for s in scores],
    }
