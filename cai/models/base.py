"""The one chat interface every backend implements, and the types that cross it.

Messages are plain OpenAI-style dicts: ``{"role": "user"|"assistant"|"system", "content": str}``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Message = dict[str, str]
FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters. Frozen and hashable so they can be part of a cache key."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per generated token, when logprobs is on
    # JSON schema for structured output; backends without support ignore it (see capabilities)
    json_schema: str | None = None

    def replace(self, **changes: Any) -> GenParams:
        data = asdict(self)
        data.update(changes)
        if isinstance(data.get("stop"), list):
            data["stop"] = tuple(data["stop"])
        return GenParams(**data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.calls + other.calls,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        return cls(
            int(data.get("prompt_tokens", 0)),
            int(data.get("completion_tokens", 0)),
            int(data.get("calls", 0)),
        )


@dataclass
class TokenLogprob:
    """One generated token, its log-probability and the top-k alternatives (token -> logprob)."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Completion:
    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    logprobs: list[TokenLogprob] | None = None
    model: str = ""
    cached: bool = False  # served from a run's call cache, not the model

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict(),
            "logprobs": [asdict(t) for t in self.logprobs] if self.logprobs is not None else None,
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Completion:
        lps = data.get("logprobs")
        return cls(
            text=data["text"],
            finish_reason=data.get("finish_reason", "stop"),
            usage=Usage.from_dict(data.get("usage")),
            logprobs=[TokenLogprob(**t) for t in lps] if lps is not None else None,
            model=data.get("model", ""),
        )


@dataclass(frozen=True)
class Capabilities:
    logprobs: bool = False
    max_top_logprobs: int = 0
    max_context: int | None = None  # tokens; None when unknown
    structured_output: bool = False


class ModelError(Exception):
    """Base of every error a backend raises. ``reason`` is a short machine-readable tag."""

    reason = "model_error"

    def __init__(self, message: str, *, reason: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        if reason:
            self.reason = reason
        self.retry_after = retry_after


class TransientModelError(ModelError):
    """Worth retrying: rate limit, 5xx, timeout, dropped connection."""

    reason = "transient"


class PermanentModelError(ModelError):
    """Retrying will not help: bad request, auth, unknown model."""

    reason = "permanent"


class ContextLengthError(PermanentModelError):
    reason = "context_length"


class ChatModel(ABC):
    """Async chat model. Implementations must be safe to call concurrently."""

    #: the spec string that built this model, e.g. "openai:gpt-4o-mini"; part of cache keys
    spec: str = ""

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    @abstractmethod
    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion: ...

    async def aclose(self) -> None:
        """Release connections, engines, threads."""

    def chat_sync(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        """Blocking convenience for scripts and notebooks. Inside a running event loop (Jupyter)
        the call runs on a helper thread with its own loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.chat(messages, params))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cai-chat-sync") as pool:
            return pool.submit(asyncio.run, self.chat(messages, params)).result()

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        """Prompt length in tokens when the backend can tell cheaply, else None."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}>"


class ModelWrapper(ChatModel):
    """Base for a ChatModel that wraps another (caching, timing, ...): the spec, capabilities
    and token counting of the wrapped model pass through; subclasses implement ``chat``."""

    def __init__(self, model: ChatModel):
        self.model = model
        self.spec = model.spec

    @property
    def capabilities(self) -> Capabilities:
        return self.model.capabilities

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        return self.model.count_tokens(messages)


def call_key(spec: str, messages: Sequence[Message], params: GenParams) -> str:
    """Content hash of one LLM call: the cache key used by run stores."""
    payload = json.dumps(
        {"model": spec, "messages": [dict(m) for m in messages], "params": params.to_dict()},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
