"""The work behind the routes, with no HTTP in it: load the upstream model, the wrapper and
the judges a config names into a ``ServerState``; answer a chat request through the
``ChatModel`` interface (the constitutional wrapper, or the upstream as it is for fields the
loop cannot honour); judge items; score rewards through the reward queue.

Failures are ``APIError``s carrying the HTTP status they mean (400 bad input, 404 not
configured, 502 upstream failed, 503 queue full, 504 timed out)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from cai.models.base import ChatModel, ContextLengthError, ModelError, Usage
from cai.models.openai_compat import RemoteChatModel, map_error
from cai.server.auth import KeyStore
from cai.server.config import ServeConfig
from cai.server.errors import APIError
from cai.server.metrics import Metrics
from cai.server.protocol import (
    ChatRequest,
    Choice,
    JudgeRequest,
    RewardRequest,
    as_prompt,
    choices_of,
    logprobs_body,
    usage_body,
)
from cai.server.reward_queue import QueueFull, RewardQueue
from cai.server.state import ServerState
from cai.wrapper import ConstitutionalWrapper, WrappedCompletion

T = TypeVar("T")


def load_judge(spec: str, options: dict[str, Any], upstream: ChatModel | None = None) -> Any:
    """A judge from its spec; a judge whose model is the upstream's spec shares that model
    instead of loading a second copy."""
    from judges import load_judge as load  # surfaces may import judges lazily

    _, _, model_spec = spec.partition(":")
    if upstream is not None and model_spec and model_spec == upstream.spec:
        return load(spec, model=upstream, **options)
    return load(spec, **options)


def build_wrapper(config: ServeConfig, model: ChatModel | None = None) -> ConstitutionalWrapper:
    from cai.models import load_model

    upstream = model if model is not None else load_model(config.model.spec, **config.model.options)
    w = config.wrapper
    return ConstitutionalWrapper(
        upstream,
        w.constitution,
        mode=w.mode,
        revisions=w.revisions,
        judges=[load_judge(spec, w.judge_options, upstream) for spec in w.judges],
        threshold=w.threshold,
        refusal=w.refusal,
        seed=w.seed,
        few_shot=w.few_shot,
    )


def build_state(
    config: ServeConfig,
    *,
    model: ChatModel | None = None,
    wrapper: ConstitutionalWrapper | None = None,
    pairwise: Any = None,
    pointwise: Any = None,
) -> ServerState:
    """The state a config describes; ``model``/``wrapper``/judges override what it would load.
    Keys are read first, so a config error surfaces before any model loads."""
    j = config.judge
    keys = KeyStore.from_config(config.auth)
    wrapper = wrapper or build_wrapper(config, model)
    up = wrapper.model
    state = ServerState(
        config=config,
        wrapper=wrapper,
        keys=keys,
        metrics=Metrics(),
        pairwise=pairwise if pairwise is not None else (j.pairwise and load_judge(j.pairwise, j.options, up)),
        pointwise=pointwise if pointwise is not None else (j.pointwise and load_judge(j.pointwise, j.options, up)),
    )
    if state.pointwise is not None:
        state.rewards = RewardQueue.for_config(state.pointwise, config)
    return state


async def close_state(state: ServerState) -> None:
    """Stop the reward queue, then close the judges and the wrapper (and so the upstream)."""
    if state.rewards is not None:
        await state.rewards.aclose()
    for judge in (state.pairwise, state.pointwise, *state.wrapper.judges):
        if judge is not None and hasattr(judge, "aclose"):
            await judge.aclose()
    await state.wrapper.aclose()


async def bounded(state: ServerState, work: Awaitable[T]) -> T:
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


def _record(metrics: Metrics, reply: WrappedCompletion) -> None:
    trace = reply.trace
    if trace is None:
        return
    for stage in trace.metadata.get("stages", []):
        metrics.stage.labels(stage["stage"]).observe(stage["seconds"])
    metrics.tokens.labels("prompt").inc(reply.usage.prompt_tokens)
    metrics.tokens.labels("completion").inc(reply.usage.completion_tokens)
    if trace.steps:
        metrics.revisions.inc(len(trace.steps))
    action = trace.metadata.get("action")
    if action == "blocked":
        metrics.blocks.inc()
    elif action == "revised":
        metrics.revised.inc()


@dataclass
class ChatResult:
    """A chat request's answers, ready for the protocol's body builders."""

    choices: list[Choice]
    usage: dict[str, int]
    trace: Any = None  # the trace dict (a list of them for n > 1) when the request asked for it


async def chat(state: ServerState, body: ChatRequest) -> ChatResult:
    """Answer ``body``: through the wrapper, or (fields the loop cannot honour, mode ``off``)
    forwarded to the upstream as it is."""
    wrapper, name = state.wrapper, state.config.served_model_name
    if body.model != name:
        raise APIError(
            404, f"model {body.model!r} not found; this server serves {name!r}", code="model_not_found", param="model"
        )
    try:
        messages = body.chat_messages()
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_request", param="messages") from None
    upstream_only = body.upstream_only()
    if upstream_only:
        choices, usage = await bounded(state, _forward(state, body, upstream_only[0]))
        return ChatResult(choices, usage)
    if body.logprobs and (wrapper.mode != "off" or not wrapper.model.capabilities.logprobs):
        why = (
            f"log-probs of the upstream's first answer do not describe a {wrapper.mode}-mode answer"
            if wrapper.mode != "off"
            else f"the upstream {wrapper.model.spec} gives no log-probs"
        )
        raise APIError(400, f"logprobs is not supported here: {why}", code="unsupported_parameter", param="logprobs")
    params = body.gen_params()
    # n independent answers (each through the whole loop); a seed gives each its own
    runs = [params if params.seed is None else params.replace(seed=params.seed + i) for i in range(body.n)]
    replies = await bounded(state, asyncio.gather(*(wrapper.chat(messages, p) for p in runs)))
    for reply in replies:
        _record(state.metrics, reply)
    choices = [Choice(r.text, r.finish_reason, logprobs_body(r.logprobs)) for r in replies]
    usage = usage_body(sum((r.usage for r in replies), Usage()))
    traces = [r.trace.to_dict() if r.trace is not None else None for r in replies]
    trace = (traces[0] if body.n == 1 else traces) if body.cai.trace else None
    return ChatResult(choices, usage, trace)


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


async def _nothing() -> list[Any]:
    return []


async def judge(state: ServerState, req: JudgeRequest) -> list[dict[str, Any]]:
    """One result per item, in order: pairwise items to the pairwise judge, pointwise ones to
    the pointwise judge, both groups at once."""
    _check_batch(state, len(req.items))
    conc = state.config.judge.concurrency
    pairs = [(i, it) for i, it in enumerate(req.items) if it.a is not None]
    points = [(i, it) for i, it in enumerate(req.items) if it.a is None]
    pair_job: Coroutine[Any, Any, list[Any]] = (
        _judge(state, "pairwise").compare_many(
            [(as_prompt(it.prompt), it.a, it.b) for _, it in pairs], concurrency=conc
        )
        if pairs
        else _nothing()
    )
    point_job: Coroutine[Any, Any, list[Any]] = (
        _judge(state, "pointwise").score_many(
            [(as_prompt(it.prompt), it.response) for _, it in points], concurrency=conc
        )
        if points
        else _nothing()
    )
    pair_out, point_out = await bounded(state, asyncio.gather(pair_job, point_job))
    results: list[dict[str, Any]] = [{} for _ in req.items]
    for kind, group, out in (("pairwise", pairs, pair_out), ("pointwise", points, point_out)):
        for (i, _), verdict in zip(group, out):
            results[i] = {"index": i, "type": kind, **verdict.to_dict()}
    return results


async def reward(state: ServerState, body: RewardRequest) -> dict[str, Any]:
    """``rewards`` and ``scores`` are plain numbers per item (OpenRLHF tensors both; an item the
    judge could not score gets ``judge.unscored_reward`` there, None in cai's shape);
    ``extra_logs`` values are numbers per item; the judge's verdicts are under ``details``."""
    judge = _judge(state, "pointwise")
    queue = state.rewards
    assert queue is not None  # built with the pointwise judge
    pairs = body.pairs(queue.markup)
    _check_batch(state, len(pairs))
    start = time.perf_counter()
    try:
        scores = await bounded(state, queue.score(pairs))
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
