"""Ctrl-C on a real `cai generate` process: exit 130, every finished sample kept in the store and
the outputs, and the rerun of the same command makes only the calls of the samples left."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cai.testing.stub_openai_server import StubOpenAIServer

N = 12
CALLS_PER_SAMPLE = 3  # answer, critique, revision (--revisions 1)


def _default_sigint() -> None:
    # as in a terminal: a test run started in the background (`make test &`, CI) inherits an
    # ignored SIGINT, and the child would then never see the Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _done(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM samples WHERE status='done'").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


def test_ctrl_c_keeps_finished_samples_and_the_rerun_resumes(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?"}) + "\n" for i in range(N)))
    out = tmp_path / "run"
    with StubOpenAIServer(latency=0.15, reply="A careful, harmless answer.") as server:
        cmd = [sys.executable, "-m", "cai.cli", "generate", str(prompts), "--out", str(out)]
        cmd += ["--model", "openai:stub", "--base-url", server.base_url, "--api-key", "sk-test"]
        cmd += ["--revisions", "1", "--concurrency", "2", "--no-few-shot", "--quiet"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
        )
        deadline = time.monotonic() + 120
        while _done(out / "state.sqlite") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the interrupt: {proc.communicate()}"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert f"interrupted; run the same command again to resume {out}" in stderr
        assert "Traceback" not in stderr

        kept = _done(out / "state.sqlite")
        assert 2 <= kept < N
        sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
        assert len(sft) == kept  # every finished sample's row was written, none twice

        before = server.stats()["requests"]
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        # only the samples left are asked for (calls a killed sample had finished are cached)
        assert server.stats()["requests"] - before <= (N - kept) * CALLS_PER_SAMPLE
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    asked = sorted(r["messages"][0]["content"] for r in rows)
    assert asked == sorted(f"Question {i}?" for i in range(N))  # each sample exactly once
