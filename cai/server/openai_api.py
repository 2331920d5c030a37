"""The slice of the OpenAI chat-completions API that `cai serve` speaks: request model,
response and SSE chunk builders."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.models.base import GenParams, Message


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_message(self) -> Message:
        if isinstance(self.content, list):
            texts = [p.text or "" for p in self.content if p.type == "text"]
            if len(texts) != len(self.content):
                raise ValueError("only text content parts are supported")
            content = "\n".join(texts)
        else:
            content = self.content or ""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class CaiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


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
    n: int = Field(default=1, ge=1, le=1)
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

    def gen_params(self, default_max_tokens: int = 256) -> GenParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=0.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            seed=self.seed,
        )


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _usage(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_body(cid: str, model: str, text: str, finish: str, usage: Any,
                    trace: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }],
        "usage": _usage(usage),
    }
    if trace is not None:
        body["cai_trace"] = trace
    return body


def _pieces(text: str, size: int = 16) -> Iterator[str]:
    """Split at whitespace into chunks of about ``size`` characters (never splitting a word)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        while end < len(text) and not text[end].isspace():
            end += 1
        yield text[start:end]
        start = end


def sse_chunks(cid: str, model: str, text: str, finish: str, usage: Any, trace: dict[str, Any] | None,
               include_usage: bool) -> Iterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                **extra}
        return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in _pieces(text):
        yield chunk({"content": piece}, None)
    yield chunk({}, finish, **({"cai_trace": trace} if trace is not None else {}))
    if include_usage:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": _usage(usage)}
        yield b"data: " + json.dumps(body).encode("utf-8") + b"\n\n"
    yield b"data: [DONE]\n\n"
