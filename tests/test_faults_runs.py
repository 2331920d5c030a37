"""The project's fault campaign: `cai generate` and `cai label` on small runs against the
fault-injecting upstream (cai.testing.stub_openai_server): 5xx, 429 + Retry-After, hangs,
malformed and truncated bodies, dropped connections, `content: null` / "". Every sample must
end up exactly once in the outputs, none silently wrong; keys never reach the run's store."""

from __future__ import annotations

import gc
import json
import sqlite3
import warnings
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.generation import agenerate_run
from cai.models import GenParams, ScriptedModel
from cai.models.base import TransientModelError
from cai.models.openai_compat import map_error, parse_completion
from cai.testing.stub_openai_server import StubOpenAIServer

REPLY = "Here is a careful and harmless answer to your question."
FAULTS = ["500", "503", "429:0.05", "malformed", "truncated", "drop", "null", "empty", "leak"]
SECRET = "sk-test-SECRETKEY0123456789"
N = 6


@pytest.fixture(scope="module")
def upstream():
    with StubOpenAIServer(reply=REPLY) as server:
        yield server


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?"}) + "\n" for i in range(N)))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _interleaved(faults: list[str]) -> list[str]:
    """Each fault followed by a normal answer, so a retried call always gets through."""
    return [part for fault in faults for part in (fault, "")]


def _exactly_once(rows: list[dict], key: str = "id") -> None:
    counts = Counter(row[key] for row in rows)
    assert counts == Counter({f"p{i}": 1 for i in range(N)}), counts


def test_generate_under_every_fault_kind(upstream, tmp_path):
    upstream.reset()
    before = upstream.stats()["faults_served"]
    faults = ["hang", *FAULTS * 2]  # first in, first served
    upstream.inject(*_interleaved(faults))
    out = tmp_path / "run"
    args = [
        "generate",
        str(_prompts(tmp_path)),
        "--out",
        str(out),
        "--model",
        "openai:stub",
        "--base-url",
        upstream.base_url,
        "--api-key",
        SECRET,
        "--revisions",
        "1",
        "--concurrency",
        "2",
        "--quiet",
        "--timeout",
        "1",
        "--max-retries",
        "4",
    ]
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0 or "failed" in result.output and " 0 failed" not in result.output:
        result = CliRunner().invoke(app, args)  # a resume retries what failed
    assert result.exit_code == 0, result.output
    served = upstream.stats()["faults_served"] - before
    assert served >= 1 + len(FAULTS)  # every kind was served
    traces = _rows(out / "traces.jsonl")
    print(f"\nfault suite (generate): {served} faults injected, {N} samples, {N - len(traces)} lost")
    _exactly_once(traces)
    for trace in traces:  # none silently wrong: every answer is the upstream's real text
        assert trace["stop_reason"] != "failed", trace
        assert trace["initial"] == REPLY and all(step["revision"] in ("", REPLY) for step in trace["steps"]), trace
    for row in _rows(out / "preferences.jsonl"):
        assert row["chosen"][-1]["content"] and row["rejected"][-1]["content"]
    assert SECRET.encode() not in (out / "state.sqlite").read_bytes()


def test_failed_samples_store_no_upstream_secret(upstream, tmp_path):
    upstream.reset()
    upstream.inject(*["leak"] * 5)  # the first call's attempts all fail (4 retries)
    out = tmp_path / "run"
    prompts = tmp_path / "one.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Hi?"}) + "\n")
    args = [
        "generate",
        str(prompts),
        "--out",
        str(out),
        "--model",
        "openai:stub",
        "--base-url",
        upstream.base_url,
        "--api-key",
        SECRET,
        "--revisions",
        "0",
        "--concurrency",
        "1",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    db = sqlite3.connect(out / "state.sqlite")
    stored = " ".join(str(row) for row in db.execute("SELECT reason, record FROM samples"))
    db.close()
    assert "server_error" in stored, (stored, result.output)
    assert SECRET not in stored and "[redacted]" in stored and SECRET not in result.output
    assert CliRunner().invoke(app, args).exit_code == 0  # a rerun retries it
    _rows_once = _rows(out / "traces.jsonl")
    assert [t["id"] for t in _rows_once] == ["p0"] and _rows_once[0]["initial"] == REPLY


def test_label_under_faults_with_hangs_and_timeout(upstream, tmp_path):
    upstream.reset()
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
            for i in range(N)
        )
    )
    before = upstream.stats()["faults_served"]
    upstream.inject(*_interleaved(["hang", *FAULTS, "hang"]))
    out = tmp_path / "labels"
    args = [
        "label",
        str(data),
        "--out",
        str(out),
        "--judge",
        "pairwise:openai:stub",
        "--base-url",
        upstream.base_url,
        "--timeout",
        "1",
        "--max-retries",
        "4",
        "--concurrency",
        "2",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        result = CliRunner().invoke(app, args)
        if result.exit_code == 1:
            result = CliRunner().invoke(app, args)
        gc.collect()
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "Unclosed" in str(w.message)]  # aiohttp's "Unclosed client session"
    labels = _rows(out / "labels.jsonl")
    print(
        f"\nfault suite (label): {upstream.stats()['faults_served'] - before} faults injected, {N} samples, "
        f"{N - len(labels)} lost"
    )
    _exactly_once(labels)
    assert all(row["status"] != "failed" for row in labels)


def test_content_null_is_transient_and_never_cached():
    reply = {"choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": "stop"}]}
    with pytest.raises(TransientModelError) as exc:
        parse_completion(reply, model="m", want_logprobs=False)
    assert exc.value.reason == "empty_completion"


def test_refused_connection_is_a_connection_error():
    import asyncio

    from cai.models.openai_backend import OpenAIChatModel

    async def call() -> BaseException:
        model = OpenAIChatModel("x", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=5)
        try:
            await model.chat([{"role": "user", "content": "hi"}])
        except Exception as exc:  # noqa: BLE001
            return exc
        finally:
            await model.aclose()
        raise AssertionError("no error")

    error = asyncio.run(call())
    assert error.reason == "connection", error  # was "timeout"
    with pytest.raises(Exception, match="user:password"):
        OpenAIChatModel("x", base_url="http://user:pw@127.0.0.1:9/v1")
    assert map_error(error).reason == "connection"


async def test_sampled_duplicates_are_independent_and_reruns_hit_the_cache(tmp_path):
    calls = []

    def answer(messages, params):
        calls.append(1)
        return f"answer {len(calls)}"

    prompts = ["Same prompt?", "Same prompt?"]
    params = GenParams(max_tokens=16, temperature=0.7)
    first = await agenerate_run(prompts, model=ScriptedModel(answer), revisions=0, params=params, out=tmp_path / "r")
    assert first.traces[0].initial != first.traces[1].initial  # were identical: one cached answer
    made = len(calls)
    again = await agenerate_run(
        prompts, model=ScriptedModel(answer), revisions=0, params=params, out=tmp_path / "r", new_run=False
    )
    assert len(calls) == made and [t.initial for t in again.traces] == [t.initial for t in first.traces]
    greedy = await agenerate_run(
        prompts,
        model=ScriptedModel(answer),
        revisions=0,
        out=tmp_path / "g",
        params=GenParams(max_tokens=16, temperature=0.0),
    )
    assert greedy.traces[0].initial == greedy.traces[1].initial  # greedy duplicates share the call
