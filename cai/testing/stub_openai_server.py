"""A small, fast OpenAI-compatible HTTP server for tests and benchmarks (loopback only).

It answers ``POST /v1/chat/completions`` (also ``GET /v1/models``, ``GET /health``) with a
fixed reply after an optional added latency, and injects faults on demand. It is a raw
asyncio HTTP/1.1 server with keep-alive, so it can drop connections and send broken bodies
the way a real misbehaving server does.

Use it in a thread (tests)::

    from cai.testing.stub_openai_server import StubOpenAIServer

    with StubOpenAIServer(latency=0.2) as server:      # or server.start() / server.stop()
        client = AsyncOpenAI(base_url=server.base_url, api_key="x")
        server.inject("429:0.3", "500")                # the next two requests fail, then normal
        ...
        server.stats()            # {"requests": N, "faults_left": M, "peak_in_flight": P}

or in its own process (benchmarks, so the server does not share the client's GIL)::

    with StubOpenAIServer(latency=0.2, subprocess=True) as server: ...

or from a shell: ``python -m cai.testing.stub_openai_server --port 8001 --latency 0.2``.

Faults (one per incoming chat request, first in first out):
``429[:RETRY_AFTER_S]`` rate limited with a Retry-After header (default 0.1 s),
``500`` / ``503`` server errors, ``slow[:SECONDS]`` answer only after SECONDS (default 5),
``drop`` close the connection without a response, ``malformed`` 200 with a broken JSON body,
``400`` bad request, ``401`` auth error, ``context`` a vLLM-style context-length 400,
``null`` / ``empty`` 200 with ``content: null`` / ``""``, ``truncated`` a 200 whose body stops
half way (Content-Length promises more, then the connection closes), ``hang`` never answer,
``leak`` a 500 whose body quotes the request's Authorization header and an internal host
name (as some proxies do).
A request whose prompt has more words than ``max_context`` also gets the context-length error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess as sp
import sys
import threading
import time
import urllib.request
from collections import deque
from typing import Any

import orjson

from cai.aio import run_sync

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages)


class _Handler:
    """The server state and request handling, running on one asyncio loop."""

    def __init__(self, latency: float, reply: str, model: str, max_context: int | None):
        self.latency = latency
        self.reply = reply
        self.model = model
        self.max_context = max_context
        self.faults: deque[str] = deque()
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0  # most chat requests handled at once
        self.faults_served = 0
        self.headers: dict[str, str] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.headers = headers
                if not await self.respond(method, path, body, writer):
                    return
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "content-type: application/json",
            f"content-length: {len(data)}",
        ] + [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)

    @staticmethod
    def _error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
        return {"error": {"message": message, "type": type_, "param": None, "code": code}}

    async def respond(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Write one response; False means the connection was dropped on purpose."""
        path = path.split("?", 1)[0]
        if path == "/control/faults" and method == "POST":
            self.faults.extend(json.loads(body)["faults"])
            self._send(writer, 200, {"faults_left": len(self.faults)})
        elif path == "/control/reset" and method == "POST":
            self.faults.clear()
            self.peak_in_flight = self.in_flight
            self._send(writer, 200, {})
        elif path == "/control/stats":
            self._send(
                writer,
                200,
                {
                    "requests": self.requests,
                    "faults_left": len(self.faults),
                    "peak_in_flight": self.peak_in_flight,
                    "faults_served": self.faults_served,
                },
            )
        elif path == "/health":
            self._send(writer, 200, {})
        elif path == "/v1/models":
            self._send(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        elif path == "/v1/chat/completions" and method == "POST":
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                return await self.chat(orjson.loads(body), writer)
            finally:
                self.in_flight -= 1
        else:
            self._send(writer, 404, self._error(f"no route {method} {path}", "not_found_error"))
        await writer.drain()
        return True

    async def chat(self, req: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        self.requests += 1
        fault = self.faults.popleft() if self.faults else ""
        self.faults_served += bool(fault)
        kind, _, arg = fault.partition(":")
        auth = self.headers.get("authorization", "")
        if self.latency:
            await asyncio.sleep(self.latency)
        prompt_words = _words(req.get("messages", []))
        if kind == "slow":
            await asyncio.sleep(float(arg or 5))
        if kind == "drop":
            writer.transport.abort()
            return False
        if kind == "hang":
            await asyncio.sleep(3600)
        if kind == "truncated":
            data = orjson.dumps(self.completion(req, prompt_words))
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(data)}\r\n\r\n".encode()
                + data[: len(data) // 2]
            )
            await writer.drain()
            writer.transport.abort()
            return False
        if kind in ("null", "empty"):
            reply = self.completion(req, prompt_words)
            reply["choices"][0]["message"]["content"] = None if kind == "null" else ""
            reply["choices"][0]["logprobs"] = None
            self._send(writer, 200, reply)
            await writer.drain()
            return True
        if kind == "malformed":
            self._send(writer, 200, b'{"id": "chatcmpl-broken", "choices": [{"message": ')
        elif kind == "429":
            self._send(
                writer,
                429,
                self._error("Rate limit reached", "rate_limit_error", "rate_limit_exceeded"),
                {"retry-after": arg or "0.1"},
            )
        elif kind in ("500", "503"):
            self._send(writer, int(kind), self._error("upstream failure", "server_error"))
        elif kind == "leak":
            self._send(
                writer,
                500,
                self._error(
                    f"upstream llm-7.internal.example.net:8443 rejected the request (Authorization: {auth})",
                    "server_error",
                ),
            )
        elif kind == "400":
            self._send(writer, 400, self._error("invalid request", "invalid_request_error"))
        elif kind == "401":
            self._send(writer, 401, self._error("invalid api key", "authentication_error", "invalid_api_key"))
        elif kind == "context" or (self.max_context is not None and prompt_words > self.max_context):
            limit = self.max_context or 2048
            self._send(
                writer,
                400,
                self._error(
                    f"This model's maximum context length is {limit} tokens. However, your request has "
                    f"{prompt_words} input tokens. Please reduce the length of the input messages.",
                    "BadRequestError",
                ),
            )
        else:
            self._send(writer, 200, self.completion(req, prompt_words))
        await writer.drain()
        return True

    def completion(self, req: dict[str, Any], prompt_words: int) -> dict[str, Any]:
        words = self.reply.split(" ")
        max_tokens = req.get("max_tokens") or req.get("max_completion_tokens") or len(words)
        kept = words[:max_tokens]
        message: dict[str, Any] = {"role": "assistant", "content": " ".join(kept)}
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": "length" if len(kept) < len(words) else "stop",
            "logprobs": None,
        }
        if req.get("tools"):  # call the first tool, as a tool-calling model would
            name = req["tools"][0]["function"]["name"]
            message.update(
                content=None,
                tool_calls=[{"id": "call_stub", "type": "function", "function": {"name": name, "arguments": "{}"}}],
            )
            choice["finish_reason"] = "tool_calls"
        elif (req.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            message["content"] = json.dumps({"reply": message["content"]})
        if req.get("logprobs"):
            top_n = int(req.get("top_logprobs") or 0)
            tokens = [w if i == 0 else " " + w for i, w in enumerate(kept)]
            choice["logprobs"] = {
                "content": [
                    {
                        "token": t,
                        "logprob": -0.25,
                        "bytes": list(t.encode()),
                        "top_logprobs": [{"token": t, "logprob": -0.25, "bytes": None}]
                        + [{"token": f"alt{k}", "logprob": -2.0 - k, "bytes": None} for k in range(1, top_n)],
                    }
                    for t in tokens
                ]
            }
        return {
            "id": f"chatcmpl-stub{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", self.model),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": len(kept),
                "total_tokens": prompt_words + len(kept),
            },
        }


class StubOpenAIServer:
    """Start/stop wrapper; ``subprocess=True`` runs the server in a child Python process."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        reply: str = "OK",
        model: str = "stub",
        max_context: int | None = None,
        subprocess: bool = False,
        port: int = 0,
    ):
        self.latency, self.reply, self.model, self.max_context = latency, reply, model, max_context
        self.use_subprocess = subprocess
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._proc: sp.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubOpenAIServer:
        if self.use_subprocess:
            self._start_process()
        else:
            self._start_thread()
        return self

    def _start_thread(self) -> None:
        ready = threading.Event()
        loop = self._loop = asyncio.new_event_loop()

        async def boot() -> None:
            handler = _Handler(self.latency, self.reply, self.model, self.max_context)
            self._server = await asyncio.start_server(handler.serve, "127.0.0.1", self.port, backlog=1024)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(boot())
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="stub-openai-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("stub OpenAI server did not start")

    def _start_process(self) -> None:
        args = [
            sys.executable,
            __file__,
            "--port",
            str(self.port),
            "--latency",
            str(self.latency),
            "--reply",
            self.reply,
            "--model",
            self.model,
        ]
        if self.max_context is not None:
            args += ["--max-context", str(self.max_context)]
        self._proc = sp.Popen(args, stdout=sp.PIPE, text=True)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line.startswith("READY "):
            self._proc.kill()
            raise RuntimeError(f"stub OpenAI server process did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None
        if self._loop is not None and self._thread is not None:
            loop, server = self._loop, self._server

            async def shutdown() -> None:
                if server is not None:
                    server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            loop.close()
            self._loop = self._thread = None

    def _control(self, path: str, payload: Any = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
            return json.loads(resp.read())

    def inject(self, *faults: str) -> None:
        """Queue faults; each following chat request consumes one (see the module doc)."""
        self._control("/control/faults", {"faults": list(faults)})

    def reset(self) -> None:
        """Drop queued faults and restart the in-flight peak."""
        self._control("/control/reset", {})

    def stats(self) -> dict[str, int]:
        return self._control("/control/stats")

    def __enter__(self) -> StubOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--reply", default="OK")
    parser.add_argument("--model", default="stub")
    parser.add_argument("--max-context", type=int, default=None)
    args = parser.parse_args()

    async def run() -> None:
        handler = _Handler(args.latency, args.reply, args.model, args.max_context)
        server = await asyncio.start_server(handler.serve, "127.0.0.1", args.port, backlog=1024)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    try:
        run_sync(run())  # uvloop where installed: the server's own CPU per request stays small
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
