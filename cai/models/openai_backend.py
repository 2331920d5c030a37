"""``openai:MODEL``: any OpenAI-compatible chat server (vLLM, llama.cpp, Ollama, SGLang, OpenAI).

The base URL comes from ``base_url=`` or ``$OPENAI_BASE_URL`` (default: OpenAI), the key from
``api_key=`` or ``$OPENAI_API_KEY`` (a local server with a base URL needs none); like the SDK,
``$OPENAI_ORG_ID`` / ``$OPENAI_PROJECT_ID`` are sent as the organization / project headers.

Requests go straight to ``{base_url}/chat/completions`` over one aiohttp session per event loop
(bodies in and out through orjson): the openai SDK's request building, httpx layer and response
models cost several times the CPU of the call itself at 100+ calls in flight. Failures are
raised as the SDK's own exception types (status errors carry the response, connection errors
their cause), so :func:`~cai.models.openai_compat.map_error` treats both backends alike. There
are no transport retries: :class:`~cai.models.retry.CallPolicy` retries transient errors only.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import weakref
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
import orjson

from cai.models.base import PermanentModelError, json_default
from cai.models.openai_compat import RemoteChatModel
from cai.redact import register_secret

OPENAI_BASE_URL = "https://api.openai.com/v1"


def _httpx() -> Any:
    """The httpx flavour the installed openai SDK builds its errors on (httpx2 from openai 3)."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


_HTTPX = _httpx()

_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(status: int, headers: Mapping[str, str], content: bytes, url: str) -> openai.APIStatusError:
    """The openai SDK's exception for an error response, built the way the SDK builds it
    (``Error code: N - <the error's message>``, ``body`` the error object, ``response`` kept)."""
    response = _HTTPX.Response(status, headers=dict(headers), content=content, request=_HTTPX.Request("POST", url))
    message = f"Error code: {status}"
    body: Any = content.decode("utf-8", "replace").strip()
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
        body = error if error is not None else body
    cls = _STATUS_ERRORS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(message, response=response, body=body)


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
        self._url = (self.base_url or OPENAI_BASE_URL).rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {key or 'EMPTY'}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        # the SDK's other credentials, from the same environment variables it reads
        for header, variable in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID")):
            if os.environ.get(variable):
                self._headers[header] = os.environ[variable]
        self.extra_body = extra_body
        # aiohttp sessions belong to one event loop; keep one per loop
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            n = self.policy.max_concurrency
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=n, limit_per_host=n),
                # the policy's deadline fires first; this only bounds a stuck socket
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout + 5),
                headers=self._headers,
            )
            self._sessions[loop] = session
        return session

    async def _create(self, kwargs: dict[str, Any]) -> Any:
        body = {"model": self.model, **kwargs, **(self.extra_body or {})}
        data = orjson.dumps(body, default=json_default)
        try:
            async with self._session().post(self._url, data=data) as resp:
                content = await resp.read()
                if resp.status >= 400:
                    raise status_error(resp.status, resp.headers, content, self._url)
        except asyncio.TimeoutError as exc:
            raise openai.APITimeoutError(request=_HTTPX.Request("POST", self._url)) from exc
        except aiohttp.ClientError as exc:
            raise openai.APIConnectionError(message=str(exc), request=_HTTPX.Request("POST", self._url)) from exc
        return orjson.loads(content)

    async def aclose(self) -> None:
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()


def load_openai(model: str, **options: Any) -> OpenAIChatModel:
    return OpenAIChatModel(model, **options)
