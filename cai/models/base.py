"""The one chat interface every backend implements, and the types that cross it.

Messages are plain OpenAI-style dicts: ``{"role": "user"|"assistant"|"system", "content": str}``.
The backend errors (``ModelError`` and its subclasses) live in :mod:`cai.errors` and are
re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import orjson

from cai.aio import run_sync
from cai.errors import ContextLengthError, ModelError, PermanentModelError, TransientModelError

__all__ = [
    "Capabilities",
    "ChatModel",
    "Completion",
    "ContextLengthError",
    "FinishReason",
    "GenParams",
    "Message",
    "ModelError",
    "ModelWrapper",
    "PermanentModelError",
    "TokenLogprob",
    "TransientModelError",
    "Usage",
    "call_key",
    "json_default",
]

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
        if isinstance(changes.get("stop"), list):
            changes["stop"] = tuple(changes["stop"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _GEN_PARAM_FIELDS}
        data["stop"] = list(self.stop)
        return data


_GEN_PARAM_FIELDS = tuple(f.name for f in fields(GenParams))


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
            "logprobs": [{"token": t.token, "logprob": t.logprob, "top": t.top} for t in self.logprobs]
            if self.logprobs is not None
            else None,
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
        the call runs on a helper thread with its own loop (``cai.aio.run_sync``)."""
        return run_sync(self.chat(messages, params))

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


def json_default(obj: Any) -> Any:
    """orjson's ``default=`` for the call path: message Mappings that are not dicts."""
    if isinstance(obj, Mapping):  # a message given as another Mapping type
        return dict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@functools.lru_cache(maxsize=256)
def _params_dict(params: GenParams) -> dict[str, Any]:
    return params.to_dict()  # read only: the same few params objects recur on every call


def call_key(spec: str, messages: Sequence[Message], params: GenParams) -> str:
    """Content hash of one LLM call: the cache key used by run stores. SHA-256 of the
    key-sorted compact JSON (orjson) of model spec, messages and params."""
    payload = orjson.dumps(
        {"model": spec, "messages": messages, "params": _params_dict(params)},
        option=orjson.OPT_SORT_KEYS,
        default=json_default,
    )
    return hashlib.sha256(payload).hexdigest()
