"""kill -9 during `cai generate` against a real vLLM server, then the same command finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
N = 12


@pytest.mark.slow
@pytest.mark.vllm
def test_kill_9_mid_run_then_resume_against_vllm(tmp_path, vllm_server):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "cai.cli",
        "generate",
        str(ROOT / "examples" / "red_team_prompts.jsonl"),
        "--out",
        str(out),
        "--model",
        f"openai:{vllm_server.model}",
        "--base-url",
        vllm_server.base_url,
        "--limit",
        str(N),
        "--revisions",
        "1",
        "--max-tokens",
        "16",
        "--concurrency",
        "4",
        "--quiet",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    traces = out / "traces.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if traces.exists() and len(traces.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunStore(out, read_only=True) as store:
        calls_at_kill = store.model_calls
        done_at_kill = store.status_counts().get("done", 0)
    assert 3 <= done_at_kill < N

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    rows = {
        name: [json.loads(x) for x in (out / name).read_text().splitlines()]
        for name in ("traces.jsonl", "sft.jsonl", "preferences.jsonl")
    }
    ids = [t["id"] for t in rows["traces.jsonl"]]
    assert sorted(ids) == sorted(f"rt-{i:03d}" for i in range(1, N + 1))  # each sample exactly once
    assert len(rows["sft.jsonl"]) == N
    assert len(rows["preferences.jsonl"]) == sum(
        t["final"].strip() != t["initial"].strip() for t in rows["traces.jsonl"]
    )
    with RunStore(out, read_only=True) as store:
        assert store.status_counts() == {"done": N}
        # every real call made over both processes is one distinct cached call: none repeated
        assert store.model_calls == store.cached_calls
        assert store.model_calls > calls_at_kill
        assert sum(t["usage"]["calls"] for t in rows["traces.jsonl"]) >= store.cached_calls
