"""The wire format of `cai serve`, in one place: request models for /v1/chat/completions,
/v1/judge and /v1/reward, and the response bodies.

Chat bodies (completion, SSE chunks, the model list) are the ``openai`` SDK's own types
(``openai.types.chat.ChatCompletion``, ``ChatCompletionChunk``, ``openai.types.Model``),
validated as they are built, so a body the SDK could not parse fails here and not in a
client. Judge and reward bodies are cai's own (OpenRLHF's shape for rewards).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.models.base import GenParams, Message, TokenLogprob, Usage
from cai.records import content_text
from cai.server.chat_markup import Markup, split_query
from cai.server.errors import APIError


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


# the fields of a tool-calling turn, kept so an OpenAI-compatible upstream gets a valid conversation
TOOL_FIELDS = ("tool_calls", "tool_call_id", "name")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_message(self) -> Message:
        if isinstance(self.content, list) and any(p.type != "text" for p in self.content):
            raise ValueError("only text content parts are supported")
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {
            "role": role,
            "content": content_text(self.model_dump(include={"content"})["content"]),
        }
        for name in TOOL_FIELDS:
            if (value := (self.model_extra or {}).get(name)) is not None:
                message[name] = value
        return message


class CaiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


# fields the critique/revision loop cannot honour: mode ``off`` sends them to an
# OpenAI-compatible upstream as they are, revising modes answer 400 naming the field
UPSTREAM_ONLY = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "response_format")
MAX_N = 16


class ChatRequest(BaseModel):
    # unknown OpenAI fields are accepted and ignored, as most OpenAI-compatible servers do
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    cai: CaiOptions = CaiOptions()

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role not in ("user", "tool"):
            raise ValueError("the last message must be a user message")
        return messages

    def chat_messages(self) -> list[Message]:
        return [m.as_message() for m in self.messages]

    def upstream_only(self) -> list[str]:
        """The set fields of UPSTREAM_ONLY, in that order."""
        extra = self.model_extra or {}
        return [name for name in UPSTREAM_ONLY if extra.get(name) is not None]

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The request as an OpenAI-compatible upstream takes it (never streamed: the route
        re-streams the answer)."""
        body = self.model_dump(exclude_none=True, exclude={"cai", "stream", "stream_options"})
        body["model"] = upstream_model
        body["messages"] = [m.model_dump(exclude_none=True) for m in self.messages]
        if not self.logprobs:
            body.pop("logprobs", None)
        return body

    def gen_params(self, default_max_tokens: int = 256) -> GenParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=0.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            seed=self.seed,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
        )


Prompt = str | list[dict[str, Any]]  # as judges take it
PromptIn = str | list[ChatMessage]  # as clients send it: text, or a conversation (content parts allowed)


def as_prompt(prompt: PromptIn) -> Prompt:
    if isinstance(prompt, str):
        return prompt
    try:
        return [dict(m.as_message()) for m in prompt]
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
    """One item ({"prompt", "response"} or {"prompt", "a", "b"}) or {"items": [...]}."""

    model_config = ConfigDict(extra="forbid")
    items: list[JudgeItem] = Field(min_length=1)

    @classmethod
    def parse(cls, raw: Any) -> JudgeRequest:
        """From the request's JSON (one item or the batch); 400 when it is neither."""
        single = isinstance(raw, dict) and "items" not in raw
        try:
            return cls.model_validate({"items": [raw]} if single else raw)
        except ValueError as exc:  # a pydantic ValidationError
            raise APIError(400, f"invalid judge request: {exc}", code="invalid_request") from None


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
        prompts: list[str | None] = list(self.prompts) if self.prompts else [None] * len(self.query or [])
        return [split_query(q, p, markup) for q, p in zip(self.query or [], prompts)]


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def fingerprint(*parts: str) -> str:
    """``system_fingerprint``: changes when the upstream, the mode or the constitution does."""
    return "fp_" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def logprobs_body(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.token.encode("utf-8")),
                "top_logprobs": [
                    {"token": k, "logprob": v, "bytes": list(k.encode("utf-8"))} for k, v in t.top.items()
                ],
            }
            for t in logprobs
        ]
    }


# a model's finish reasons as OpenAI names them ("error": the provider stopped the answer)
_FINISH = {"stop": "stop", "length": "length", "error": "content_filter"}


@dataclass
class Choice:
    """One answer of a response: text or tool calls, why it ended, its log-probs."""

    text: str | None
    finish_reason: str
    logprobs: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.finish_reason = _FINISH.get(self.finish_reason, self.finish_reason)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


def choices_of(upstream: dict[str, Any]) -> list[Choice]:
    """The choices of an upstream chat-completion body."""
    return [
        Choice(
            c.get("message", {}).get("content"),
            c.get("finish_reason") or "stop",
            c.get("logprobs"),
            c.get("message", {}).get("tool_calls"),
        )
        for c in sorted(upstream.get("choices") or [], key=lambda c: c.get("index", 0))
    ]


def completion_json(
    cid: str, model: str, choices: list[Choice], usage: dict[str, int], fp: str, trace: Any = None
) -> bytes:
    """A ``chat.completion`` body (with ``cai_trace`` when a trace is given)."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": c.message(), "finish_reason": c.finish_reason, "logprobs": c.logprobs}
            for i, c in enumerate(choices)
        ],
        "usage": usage,
        "system_fingerprint": fp,
    }
    if trace is not None:
        body["cai_trace"] = trace
    return ChatCompletion.model_validate(body).model_dump_json(exclude_unset=True).encode("utf-8")


def models_body(served: str) -> dict[str, Any]:
    """The ``/v1/models`` list: the one served name."""
    model = Model(id=served, object="model", created=0, owned_by="cai")
    return {"object": "list", "data": [model.model_dump(exclude_unset=True)]}


def _pieces(text: str, size: int = 16) -> Iterator[str]:
    """Split at whitespace into chunks of about ``size`` characters (never splitting a word)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        while end < len(text) and not text[end].isspace():
            end += 1
        yield text[start:end]
        start = end


def sse_chunks(
    cid: str, model: str, choices: list[Choice], usage: dict[str, int], fp: str, trace: Any, include_usage: bool
) -> Iterator[bytes]:
    """The SSE stream of a finished response: per choice a role chunk, text pieces (or its tool
    calls), a finish chunk; then the usage chunk when asked for, then ``[DONE]``."""
    created = int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": fp,
            "choices": choices,
            **extra,
        }
        return (
            b"data: " + ChatCompletionChunk.model_validate(body).model_dump_json(exclude_unset=True).encode() + b"\n\n"
        )

    def chunk(
        index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None, **extra: Any
    ) -> bytes:
        return event([{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}], **extra)

    for i, c in enumerate(choices):
        yield chunk(i, {"role": "assistant", "content": ""})
        if c.tool_calls:
            yield chunk(i, {"tool_calls": [{"index": k, **call} for k, call in enumerate(c.tool_calls)]})
        for piece in _pieces(c.text or ""):
            yield chunk(i, {"content": piece})
        last = i == len(choices) - 1
        yield chunk(i, {}, c.finish_reason, c.logprobs, **({"cai_trace": trace} if trace is not None and last else {}))
    if include_usage:
        yield event([], usage=usage)
    yield b"data: [DONE]\n\n"
