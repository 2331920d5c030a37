"""``openai:MODEL``: any OpenAI-compatible chat server (vLLM, llama.cpp, Ollama, SGLang, OpenAI).

The base URL comes from ``base_url=`` or ``$OPENAI_BASE_URL`` (default: OpenAI), the key from
``api_key=`` or ``$OPENAI_API_KEY`` (a local server with a base URL needs none). The SDK's own
retries are off: :class:`~cai.models.policy.CallPolicy` retries transient errors only.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai

from cai.models.base import PermanentModelError
from cai.models.openai_compat import RemoteChatModel
from cai.redact import register_secret


def _http_client(max_connections: int) -> httpx.AsyncClient:
    """aiohttp's transport (openai's ``DefaultAioHttpClient``, from the httpx-aiohttp package)
    when installed: at 100+ calls in flight httpx's own pool costs several times more CPU per
    call. Plain httpx otherwise."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    aiohttp_client = getattr(openai, "DefaultAioHttpClient", None)  # openai >= 1.89
    if aiohttp_client is not None:
        try:
            return aiohttp_client(limits=limits)
        except RuntimeError:  # httpx-aiohttp not installed
            pass
    return openai.DefaultAsyncHttpxClient(limits=limits)


class OpenAIChatModel(RemoteChatModel):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        extra_body: dict[str, Any] | None = None,
        spec: str = "",
        **policy: Any,
    ):
        """``policy`` options: max_concurrency, timeout, rpm, tpm, max_retries, backoff_initial,
        max_context (see :class:`~cai.models.openai_compat.RemoteChatModel`)."""
        if not model:
            raise PermanentModelError("openai: spec needs a model name, e.g. 'openai:gpt-4o-mini'")
        super().__init__(model, spec=spec or f"openai:{model}", **policy)
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key and not self.base_url:
            raise PermanentModelError(
                "no OpenAI API key: set OPENAI_API_KEY, or pass base_url for a local server", reason="auth"
            )
        if self.base_url and urlsplit(self.base_url).username is not None:
            raise PermanentModelError(
                "openai: base_url must not hold user:password@ credentials; pass api_key", reason="bad_config"
            )
        register_secret(key)
        self._api_key = key or "EMPTY"
        self.extra_body = extra_body
        # httpx pools belong to one event loop; keep one client per loop
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )

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
                http_client=_http_client(n),
            )
            self._clients[loop] = client
        return client

    async def _create(self, kwargs: dict[str, Any]) -> Any:
        # The typed ``chat.completions.create`` re-walks every message against the SDK's
        # TypedDicts and builds pydantic objects: ~10 ms of CPU per call on long critique
        # conversations, which caps a single event loop near 100 calls/s. Our request body is
        # already plain JSON, so post it through the same client (auth, pooling, error types)
        # and read the JSON back as a dict.
        body = {"model": self.model, **kwargs, **(self.extra_body or {})}
        response = await self._client().post("/chat/completions", body=body, cast_to=httpx.Response)
        return response.json()

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()


def load_openai(model: str, **options: Any) -> OpenAIChatModel:
    return OpenAIChatModel(model, **options)
