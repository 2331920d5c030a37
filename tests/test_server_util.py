"""Helpers for the server tests: run a real uvicorn server on loopback in a thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from cai.server.app import create_app
from cai.server.config import load_config
from cai.server.transport import uvicorn_options

KEYS = "sk-all;sk-chat chat,models;sk-reward reward,judge"


class LiveServer:
    """uvicorn on 127.0.0.1:<free port> in a background thread (its own event loop)."""

    def __init__(self, app: Any, **options: Any):
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2, **options)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.url}/v1"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(model: Any = None, *, overrides: dict[str, Any] | None = None, **app_kwargs: Any) -> LiveServer:
    cfg = load_config(None, {"auth.keys": KEYS, "wrapper.mode": "off", **(overrides or {})}, environ={})
    return LiveServer(create_app(cfg, model=model, **app_kwargs), **uvicorn_options(cfg.limits))  # as `cai serve`
