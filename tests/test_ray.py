"""Ray scale-out (cai.models.ray_pool) on a real local Ray cluster: sticky, load-based routing,
a replica's process killed mid-run, the driver killed and the command rerun.

One cluster per module (Ray starts slowly on two busy cores). Its workers are told by an
environment variable, set only while the cluster starts, that they are replicas: the script
models below then pause per call and can kill their own process once, when a test arms it;
the same scripts in this (driver) process do neither.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cai.errors import ModelSpecError
from cai.models import GenParams, Message, load_model
from cai.runner import Outcome, OutputWriter, Runner, Sample
from cai.store import CachedModel, RunStore, sample_scope

ray = pytest.importorskip("ray")

REPLICA_ENV = "CAI_TEST_RAY_REPLICA"  # the kill folder; set in Ray's workers only
REPLY = "scripted:tests.test_ray:reply"
WHOAMI = "scripted:tests.test_ray:whoami"
CAI = [str(Path(sys.executable).with_name("cai"))]
_served = 0  # calls this process served as a replica


def reply(messages: Sequence[Message], params: GenParams) -> str:
    """A deterministic answer to the whole conversation. In a replica: 50 ms per call, and the
    replica whose third call finds ``armed`` in the kill folder renames it to ``fired`` and
    kills its own process with SIGKILL (once per armed test)."""
    global _served
    kill_dir = os.environ.get(REPLICA_ENV)
    if kill_dir:
        _served += 1
        time.sleep(0.05)
        if _served >= 3:
            try:
                os.rename(Path(kill_dir) / "armed", Path(kill_dir) / "fired")
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
    digest = hashlib.sha256(json.dumps(list(messages), sort_keys=True).encode()).hexdigest()[:10]
    return f"Reply {digest} to: {messages[-1]['content'][:40]}"


def whoami(messages: Sequence[Message], params: GenParams) -> str:
    """The replica's process id, and what was asked."""
    return f"{os.getpid()}|{messages[-1]['content']}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    import logging

    kill_dir = tmp_path_factory.mktemp("ray-kill")
    os.environ[REPLICA_ENV] = str(kill_dir)  # the cluster's workers inherit it ...
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    finally:
        del os.environ[REPLICA_ENV]  # ... this process does not keep it
    yield SimpleNamespace(address=ray.get_runtime_context().gcs_address, kill_dir=kill_dir)
    ray.shutdown()


def _user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


async def _conversations(pool: Any, n_samples: int, n_calls: int, concurrency: int) -> dict[str, list[str]]:
    """Each sample makes ``n_calls`` calls in its own ``sample_scope``; its replies, by sample."""
    queue = iter(range(n_samples))
    replies: dict[str, list[str]] = {}

    async def worker() -> None:
        for i in queue:
            with sample_scope(f"s{i}"):
                replies[f"s{i}"] = [(await pool.chat(_user(f"s{i} turn {j}"))).text for j in range(n_calls)]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return replies


def test_pool_options_are_checked_before_any_cluster_starts() -> None:
    with pytest.raises(ModelSpecError, match="replicas: must be >= 1"):
        load_model(REPLY, replicas=0)
    with pytest.raises(ModelSpecError, match="replicas: 3 given but base_urls has 2 entries"):
        load_model("openai:m", base_urls=["http://a/v1", "http://b/v1"], replicas=3)
    with pytest.raises(ModelSpecError, match="no backend"):
        load_model("gpt-4o", replicas=2)
    assert not ray.is_initialized()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(ModelSpecError, match=f"--ray 127.0.0.1:{port}: no Ray cluster answers there"):
        load_model(REPLY, ray=f"127.0.0.1:{port}", replicas=1)
    assert not ray.is_initialized()


async def test_a_sample_sticks_to_one_replica_and_new_ones_go_to_the_least_loaded(cluster: SimpleNamespace) -> None:
    pool = load_model(WHOAMI, ray=cluster.address, replicas=2, delay=0.05)
    try:
        replies = await _conversations(pool, n_samples=8, n_calls=3, concurrency=4)
        stats = pool.replica_stats()
    finally:
        await pool.aclose()
    pids = {sample: {text.split("|")[0] for text in texts} for sample, texts in replies.items()}
    assert all(len(p) == 1 for p in pids.values()), pids  # every call of a sample on one replica
    per_replica = {str(row["pid"]): row["calls"] for row in stats}
    assert set().union(*pids.values()) == set(per_replica)  # both replicas served samples
    for pid, calls in per_replica.items():
        assert calls == 3 * sum(p == {pid} for p in pids.values())
    assert all(text.endswith(f"s{s[1:]} turn {j}") for s, texts in replies.items() for j, text in enumerate(texts))


async def test_a_slow_replica_does_not_hold_the_run(cluster: SimpleNamespace) -> None:
    pool = load_model(WHOAMI, ray=cluster.address, replica_options=[{"delay": 0.4}, {"delay": 0.0}])
    try:
        start = time.monotonic()
        await _conversations(pool, n_samples=20, n_calls=2, concurrency=2)
        wall = time.monotonic() - start
        slow, fast = (row["calls"] for row in pool.replica_stats())
    finally:
        await pool.aclose()
    # pull-based: the slow replica holds one sample at a time while the fast one takes the rest;
    # a fixed split would give it 10 samples, 8 s of calls
    assert slow + fast == 40
    assert fast >= 3 * slow, (slow, fast)
    assert wall < 4.0, wall


async def test_a_killed_replica_restarts_and_its_samples_finish_elsewhere(
    cluster: SimpleNamespace, tmp_path: Path
) -> None:
    pool = load_model(WHOAMI, ray=cluster.address, replicas=2, delay=0.3)
    store = RunStore(tmp_path / "run", {"task": "ray-kill"})
    model = CachedModel(pool, store)

    async def work(sample: Sample) -> Outcome:
        texts = [(await model.chat(_user(f"{sample.id} turn {j}"))).text for j in range(3)]
        return Outcome(record={"id": sample.id, "texts": texts})

    async def kill_replica_0() -> None:
        await asyncio.sleep(0.5)
        os.kill(pool.replica_stats()[0]["pid"], signal.SIGKILL)

    try:
        killer = asyncio.create_task(kill_replica_0())
        writers = [OutputWriter("out.jsonl", lambda record: [record])]
        summary = await Runner(store, writers, concurrency=6, progress=False).run(
            [Sample(f"s{i}", i) for i in range(6)], work
        )
        await killer
        for _ in range(100):  # Ray restarts the actor in the background
            if pool.replica_stats()[0]["up"]:
                break
            await asyncio.sleep(0.2)
        stats = pool.replica_stats()
        calls = (store.model_calls, store.cached_calls)
    finally:
        await pool.aclose()
        store.close()
    assert summary.done == 6 and not summary.failed
    assert stats[0]["restarts"] == 1 and stats[1]["restarts"] == 0
    assert stats[0]["up"]  # restarted by Ray
    assert calls == (18, 18)  # no stored call repeated (the killed calls never finished)
    rows = [json.loads(line) for line in (tmp_path / "run" / "out.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"s{i}" for i in range(6)]
    for row in rows:
        assert [t.split("|")[1] for t in row["texts"]] == [f"{row['id']} turn {j}" for j in range(3)]


def _drop_timings(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_timings(v) for k, v in data.items() if not k.endswith("seconds")}
    if isinstance(data, list):
        return [_drop_timings(v) for v in data]
    return data


def _by_id(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), f"{path.name}: a sample written twice"
    return {row["id"]: _drop_timings(row) for row in rows}


def _sorted_lines(path: Path) -> list[str]:
    return sorted(path.read_text(encoding="utf-8").splitlines())


def _model_calls(run_dir: Path) -> tuple[int, int]:
    """(model_calls, cached_calls) of a run directory, read without its lock."""
    db = sqlite3.connect(f"{(run_dir / 'state.sqlite').resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='model_calls'").fetchone()
        return int(row[0]) if row else 0, db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0, 0
    finally:
        db.close()


GENERATE = ["--revisions", "1", "--max-tokens", "32", "--no-report", "--quiet", "--concurrency", "4"]


@pytest.mark.slow
def test_replica_killed_then_driver_killed_then_rerun_is_exactly_once(cluster: SimpleNamespace, tmp_path: Path) -> None:
    from cai.generation import agenerate_run

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(16)))
    reference = tmp_path / "one-process"
    asyncio.run(agenerate_run(prompts, model=REPLY, revisions=1, params=GenParams(max_tokens=32), out=reference))

    run = tmp_path / "ray-run"
    command = [*CAI, "generate", str(prompts), "--out", str(run), "--model", REPLY, *GENERATE]
    command += ["--ray", cluster.address, "--replicas", "2"]
    (cluster.kill_dir / "armed").touch()  # the first replica to serve 3 calls kills itself
    driver = subprocess.Popen(command, cwd=Path(__file__).parents[1], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ((cluster.kill_dir / "fired").exists() and _model_calls(run)[0] >= 16):
            assert driver.poll() is None, f"the run ended before it was killed:\n{driver.stderr.read()}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    stopped_at = _model_calls(run)[0]
    total = _model_calls(reference)[0]
    assert 16 <= stopped_at < total, (stopped_at, total)

    rerun = subprocess.run(command, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "replicas" in rerun.stderr  # the per-replica table follows the run summary

    assert _by_id(run / "traces.jsonl") == _by_id(reference / "traces.jsonl")
    for name in ("sft.jsonl", "preferences.jsonl"):
        assert _sorted_lines(run / name) == _sorted_lines(reference / name)
    assert _model_calls(run) == _model_calls(reference) == (total, total)  # no stored call repeated


@pytest.mark.slow
def test_eval_on_a_local_cluster_started_by_the_command(tmp_path: Path) -> None:
    """``--replicas`` alone: the command starts Ray in its own process, and stops it."""
    prompts = tmp_path / "eval.jsonl"
    rows = [{"prompt": f"Tell me about topic {i}.", "label": "safe" if i % 2 else "unsafe"} for i in range(4)]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = [*CAI, "eval", "safety", "--model", REPLY, "--judge", "rules:refusal", "--prompts", str(prompts)]
    command += ["--out", str(tmp_path / "run"), "--replicas", "2", "--json", str(tmp_path / "m.json")]
    result = subprocess.run(command, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = result.stderr[result.stderr.index(f"{REPLY}: replicas") :]
    served = [int(line.split()[3]) for line in table.splitlines() if line.split()[1:2] in (["0"], ["1"])]
    assert len(served) == 2 and sum(served) == _model_calls(tmp_path / "run")[0] == 4, table
    assert json.loads((tmp_path / "m.json").read_text())


@pytest.mark.slow
async def test_embedded_replicas_match_one_process(cluster: SimpleNamespace, tmp_path: Path) -> None:
    from cai.generation import agenerate_run

    prompts = ["How do I boil an egg?", "Name a colour.", "What is 2 + 2?"]
    params = GenParams(max_tokens=16)
    one = await agenerate_run(prompts, model="embedded", revisions=1, params=params, out=tmp_path / "one")
    pooled = await agenerate_run(
        prompts,
        model="embedded",
        revisions=1,
        params=params,
        out=tmp_path / "pool",
        model_options={"ray": cluster.address, "replicas": 2},
    )
    assert pooled.summary.done == 3 and not pooled.summary.failed
    assert [_drop_timings(t.to_dict()) for t in pooled.traces] == [_drop_timings(t.to_dict()) for t in one.traces]
    assert _model_calls(tmp_path / "pool") == _model_calls(tmp_path / "one")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "0"], "--replicas: must be >= 1 (got 0)"),
        (
            ["--base-url", "http://a/v1", "--base-url", "http://b/v1", "--replicas", "3"],
            "--replicas: 3 given with 2 --base-url; give one --base-url per replica",
        ),
        (["--ray", " "], "--ray: expected 'local', 'auto' or HOST:PORT"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["generate", "prompts.jsonl", "--model", "openai:m"],
        ["label", "pairs.jsonl", "--out", "run", "--judge", "pairwise:openai:m"],
        ["eval", "safety", "--model", "openai:m"],
        ["eval", "winrate", "--policy", "openai:m", "--baseline", "openai:n", "--judge", "pairwise:openai:m"],
    ],
)
def test_scale_out_flag_errors(command: list[str], args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from cai.cli import app

    result = CliRunner().invoke(app, [*command, *args])
    assert result.exit_code == 2, result.output
    assert f"error: {message}" in result.output


def test_ray_flag_without_ray_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from cai.cli import app

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    result = CliRunner().invoke(app, ["generate", "prompts.jsonl", "--ray", "local"])
    assert result.exit_code == 2
    assert "error: --ray: ray is not installed; pip install 'cai[ray]'" in result.output


def test_replicas_the_cluster_cannot_place_fail_with_the_resources_asked(cluster: SimpleNamespace) -> None:
    from cai.models.base import TransientModelError

    # a vllm: replica reserves a GPU by default; this cluster has none, so it never starts
    with pytest.raises(TransientModelError, match=r"did not start within 2 s.*num_gpus=1\.0"):
        load_model("vllm:/no/such/model", ray=cluster.address, replicas=1, ready_timeout=2)
