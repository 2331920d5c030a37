"""The OpenAI chat-completions wire format, shared by the openai and litellm backends:
request arguments from GenParams, Completion from a response, typed errors from the openai
SDK's exceptions (LiteLLM's exceptions subclass them), and :class:`RemoteChatModel`, the
common ``chat`` of both backends under one :class:`~cai.models.retry.CallPolicy`."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import openai

from cai.models.base import (
    Capabilities,
    ChatModel,
    Completion,
    ContextLengthError,
    GenParams,
    Message,
    ModelError,
    PermanentModelError,
    TokenLogprob,
    TransientModelError,
    Usage,
)
from cai.models.retry import CallPolicy, RetryConfig
from cai.redact import scrub

_CONTEXT_PATTERNS = re.compile(
    r"context length|context_length|context window|maximum context|too many tokens|prompt is too long"
    r"|input is too long|reduce the length",
    re.IGNORECASE,
)


def request_kwargs(messages: Sequence[Message], params: GenParams) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "messages": [dict(m) for m in messages],
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.stop:
        kwargs["stop"] = list(params.stop)
    if params.seed is not None:
        kwargs["seed"] = params.seed
    if params.logprobs:
        kwargs["logprobs"] = True
        if params.top_logprobs:
            kwargs["top_logprobs"] = params.top_logprobs
    if params.json_schema:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": json.loads(params.json_schema), "strict": True},
        }
    return kwargs


def estimate_tokens(messages: Sequence[Message], params: GenParams) -> int:
    """Rough token cost for tokens/min limiting (4 chars per token plus the completion budget)."""
    return sum(len(m.get("content") or "") for m in messages) // 4 + len(messages) * 4 + params.max_tokens


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _logprobs(choice: Any) -> list[TokenLogprob] | None:
    content = _get(_get(choice, "logprobs"), "content")
    if content is None:
        return None
    return [
        TokenLogprob(
            token=_get(item, "token"),
            logprob=float(_get(item, "logprob")),
            top={_get(alt, "token"): float(_get(alt, "logprob")) for alt in (_get(item, "top_logprobs") or [])},
        )
        for item in content
    ]


def parse_completion(response: Any, *, model: str, want_logprobs: bool) -> Completion:
    choices = _get(response, "choices") or []
    if not choices:
        raise TransientModelError("response has no choices", reason="bad_response")
    choice = choices[0]
    text = _get(_get(choice, "message"), "content")
    finish = _get(choice, "finish_reason")
    # `content: null` or "" with status 200 is a failed call, not an empty answer (a judge's
    # one-token answer may be empty text with its log-probs)
    if not text and not (want_logprobs and _get(_get(choice, "logprobs"), "content")):
        raise TransientModelError(f"response has no content (finish_reason {finish!r})", reason="empty_completion")
    text = text or ""
    usage = _get(response, "usage")
    return Completion(
        text=text,
        finish_reason="length" if finish == "length" else "error" if finish == "content_filter" else "stop",
        usage=Usage(int(_get(usage, "prompt_tokens", 0) or 0), int(_get(usage, "completion_tokens", 0) or 0), 1),
        logprobs=_logprobs(choice) if want_logprobs else None,
        model=model,
    )


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _connection_failure(exc: BaseException) -> BaseException | None:
    """aiohttp's transport reports a refused or dropped connection as httpx.ConnectTimeout;
    its cause chain still names the real event (an OSError, or aiohttp's connection errors)."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        name = type(cause).__name__
        if (
            isinstance(cause, OSError)
            and not isinstance(cause, TimeoutError)
            or name
            in (
                "ServerDisconnectedError",
                "ClientOSError",
                "ClientConnectorError",
                "ClientConnectorDNSError",
            )
        ):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def map_error(exc: BaseException) -> ModelError:
    """Typed cai error for an openai (or LiteLLM) SDK exception; unknown errors are permanent."""
    if isinstance(exc, ModelError):
        return exc
    # upstream error bodies can quote credentials (some proxies echo the Authorization header)
    message = scrub(str(exc), limit=300)
    dropped = _connection_failure(exc)
    if isinstance(exc, openai.APITimeoutError) and dropped is None:
        return TransientModelError(f"request timed out: {message}", reason="timeout")
    if isinstance(exc, openai.APIConnectionError):
        detail = scrub(str(dropped), limit=300) if dropped is not None else message
        return TransientModelError(f"connection failed: {detail}", reason="connection")
    if isinstance(exc, openai.APIResponseValidationError) or isinstance(exc, json.JSONDecodeError):
        return TransientModelError(f"malformed response: {message}", reason="bad_response")
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.RateLimitError) or status == 429:
        return TransientModelError(f"rate limited: {message}", reason="rate_limit", retry_after=_retry_after(exc))
    if status is not None and (status >= 500 or status in (408, 409)):
        return TransientModelError(
            f"server error {status}: {message}", reason="server_error", retry_after=_retry_after(exc)
        )
    if status in (400, 413, 422) or isinstance(exc, openai.BadRequestError):
        if _CONTEXT_PATTERNS.search(message) or "ContextWindowExceeded" in type(exc).__name__:
            return ContextLengthError(message)
        return PermanentModelError(f"bad request: {message}", reason="bad_request")
    if status in (401, 403):
        return PermanentModelError(f"not authorized: {message}", reason="auth")
    if status == 404:
        return PermanentModelError(f"not found: {message}", reason="not_found")
    if type(exc).__name__ in ("ServiceUnavailableError", "APIError") and status is None:
        return TransientModelError(message, reason="server_error")
    return PermanentModelError(f"{type(exc).__name__}: {message}", reason="error")


class RemoteChatModel(ChatModel):
    """A chat model behind an OpenAI-style API; subclasses only send the request."""

    def __init__(
        self,
        model: str,
        *,
        spec: str,
        max_concurrency: int = 32,
        timeout: float = 120.0,
        rpm: float | None = None,
        tpm: float | None = None,
        max_retries: int = 4,
        backoff_initial: float = 0.5,
        max_context: int | None = None,
    ):
        self.model = model
        self.spec = spec
        self.max_context = max_context
        self.policy = CallPolicy(
            max_concurrency=max_concurrency,
            rpm=rpm,
            tpm=tpm,
            timeout=timeout,
            retry=RetryConfig(max_retries=max_retries, backoff_initial=backoff_initial),
        )

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(logprobs=True, max_top_logprobs=20, max_context=self.max_context, structured_output=True)

    @abstractmethod
    async def _create(self, kwargs: dict[str, Any]) -> Any:
        """Send one chat-completions request; return the response object."""

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = params or GenParams()
        kwargs = request_kwargs(messages, params)
        cost = estimate_tokens(messages, params) if self.policy.tokens else 0

        async def call() -> Completion:
            try:
                response = await self._create(kwargs)
                return parse_completion(response, model=self.model, want_logprobs=params.logprobs)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                raise
            except Exception as exc:
                raise map_error(exc) from exc

        completion = await self.policy.run(call, token_cost=cost)
        self.policy.used_tokens(cost, completion.usage.total_tokens)
        return completion
