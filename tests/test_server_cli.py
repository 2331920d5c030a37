"""`cai serve` as a user runs it: the CLI in a subprocess, config file + env + flags, in front
of a real HTTP upstream (the stub OpenAI server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import openai

from cai.testing import StubOpenAIServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_config_env_and_flags(tmp_path):
    port = free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("served_model_name: wrong-name\nwrapper:\n  mode: off\nlimits:\n  max_concurrency: 4\n")
    with StubOpenAIServer(reply="Hello from upstream.") as stub:
        env = {**os.environ, "CAI_SERVE_AUTH__KEYS": "sk-cli chat,models"}
        cmd = [
            sys.executable,
            "-m",
            "cai.cli",
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(port),
            "--model",
            "openai:stub",
            "--base-url",
            stub.base_url,
            "--served-model-name",
            "guarded",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "cai serve did not start"
                time.sleep(0.2)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["guarded"]
            r = client.chat.completions.create(model="guarded", messages=[{"role": "user", "content": "Hi"}])
            assert r.choices[0].message.content == "Hello from upstream."
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        assert "sk-cli" not in proc.stdout.read()  # keys never logged


def test_cli_reports_config_errors(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("wrapper:\n  mode: sometimes\n")
    out = subprocess.run(
        [sys.executable, "-m", "cai.cli", "serve", "--config", str(cfg), "--no-auth"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert f"{cfg}:2: field wrapper.mode" in out.stderr
