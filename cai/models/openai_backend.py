"""``openai:MODEL``: any OpenAI-compatible chat server (vLLM, llama.cpp, Ollama, SGLang, OpenAI).

The base URL comes from ``base_url=`` or ``$OPENAI_BASE_URL`` (default: OpenAI), the key from
``api_key=`` or ``$OPENAI_API_KEY`` (a local server with a base URL needs none). The SDK's own
retries are off: :class:`~cai.models.policy.CallPolicy` retries transient errors only.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any, Sequence

import httpx
import openai

from cai.models.base import Capabilities, ChatModel, Completion, GenParams, Message, PermanentModelError
from cai.models.openai_compat import estimate_tokens, map_error, parse_completion, request_kwargs
from cai.models.policy import CallPolicy, RetryConfig


class OpenAIChatModel(ChatModel):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 32,
        timeout: float = 120.0,
        rpm: float | None = None,
        tpm: float | None = None,
        max_retries: int = 4,
        backoff_initial: float = 0.5,
        max_context: int | None = None,
        extra_body: dict[str, Any] | None = None,
        spec: str = "",
    ):
        if not model:
            raise PermanentModelError("openai: spec needs a model name, e.g. 'openai:gpt-4o-mini'")
        self.model = model
        self.spec = spec or f"openai:{model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key and not self.base_url:
            raise PermanentModelError(
                "no OpenAI API key: set OPENAI_API_KEY, or pass base_url for a local server", reason="auth"
            )
        self._api_key = key or "EMPTY"
        self.max_context = max_context
        self.extra_body = extra_body
        self.policy = CallPolicy(
            max_concurrency=max_concurrency,
            rpm=rpm,
            tpm=tpm,
            timeout=timeout,
            retry=RetryConfig(max_retries=max_retries, backoff_initial=backoff_initial),
        )
        # httpx pools belong to one event loop; keep one client per loop
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI]" = (
            weakref.WeakKeyDictionary()
        )

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(logprobs=True, max_top_logprobs=20, max_context=self.max_context, structured_output=True)

    def _client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            n = self.policy.max_concurrency
            client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.policy.timeout + 5,  # the policy's deadline fires first
                max_retries=0,
                http_client=openai.DefaultAsyncHttpxClient(
                    limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)
                ),
            )
            self._clients[loop] = client
        return client

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = params or GenParams()
        kwargs = request_kwargs(messages, params)
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        cost = estimate_tokens(messages, params) if self.policy.tokens else 0

        async def call() -> Completion:
            try:
                response = await self._client().chat.completions.create(model=self.model, **kwargs)
                return parse_completion(response, model=self.model, want_logprobs=params.logprobs)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                raise
            except Exception as exc:
                raise map_error(exc) from exc

        completion = await self.policy.run(call, token_cost=cost)
        self.policy.used_tokens(cost, completion.usage.total_tokens)
        return completion

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()


def load_openai(model: str, **options: Any) -> OpenAIChatModel:
    return OpenAIChatModel(model, **options)
