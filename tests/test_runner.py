"""Runner + store logic with scripted models: concurrency, resume, exactly-once outputs, cache."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cai.models import GenParams, PermanentModelError, ScriptedModel, TransientModelError
from cai.runner import Outcome, OutputWriter, Runner, Sample
from cai.store import CachedModel, ConfigMismatchError, RunLockedError, RunStore

WRITERS = [
    OutputWriter("out.jsonl", lambda r: [r]),
    OutputWriter("even.jsonl", lambda r: [r] if r["n"] % 2 == 0 else []),
]


def _samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", data={"n": i}) for i in range(n)]


def _work(model):
    async def work(sample: Sample) -> Outcome:
        a = await model.chat([{"role": "user", "content": f"q{sample.data['n']}"}])
        b = await model.chat(
            [{"role": "user", "content": f"q{sample.data['n']}"}, {"role": "assistant", "content": a.text}]
        )
        return Outcome(
            record={"id": sample.id, "n": sample.data["n"], "text": b.text}, counters={"ok": 1}, usage=a.usage + b.usage
        )

    return work


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_run_writes_outputs_and_summary(tmp_path):
    store = RunStore(tmp_path, {"model": "scripted"})
    model = CachedModel(ScriptedModel(lambda m, p: m[-1]["content"] + "!"), store)
    summary = await Runner(store, WRITERS, concurrency=4, progress=False).run(_samples(10), _work(model))
    assert summary.done == 10 and summary.n_failed == 0 and summary.counters["ok"] == 10
    assert summary.model_calls == 20 and summary.cache_hits == 0
    assert summary.counters["prompt_tokens"] > 0
    assert sorted(r["n"] for r in _lines(tmp_path / "out.jsonl")) == list(range(10))
    assert sorted(r["n"] for r in _lines(tmp_path / "even.jsonl")) == [0, 2, 4, 6, 8]
    store.close()

    # rerunning a finished run: nothing to do, zero model calls, outputs unchanged
    store = RunStore(tmp_path, {"model": "scripted"})
    scripted = ScriptedModel(lambda m, p: "x")
    summary = await Runner(store, WRITERS, progress=False).run(_samples(10), _work(CachedModel(scripted, store)))
    assert summary.done == 0 and summary.done_before == 10 and scripted.calls == []
    assert len(_lines(tmp_path / "out.jsonl")) == 10
    store.close()


async def test_bounded_concurrency_without_waves(tmp_path):
    inflight = peak = 0
    finished: list[str] = []

    async def work(sample: Sample) -> Outcome:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.2 if sample.id == "s0" else 0.01)
        inflight -= 1
        finished.append(sample.id)
        return Outcome(record={"id": sample.id})

    store = RunStore(None)
    await Runner(store, concurrency=3, progress=False).run(_samples(12), work)
    assert peak == 3
    # the slow sample does not hold back the others: they all finish before it
    assert finished[-1] == "s0"


async def test_failures_are_recorded_and_retried(tmp_path):
    attempts: dict[str, int] = {}

    async def flaky(sample: Sample) -> Outcome:
        attempts[sample.id] = attempts.get(sample.id, 0) + 1
        if sample.id == "s1" and attempts[sample.id] == 1:
            raise PermanentModelError("bad request", reason="bad_request")
        if sample.id == "s2" and attempts[sample.id] == 1:
            raise KeyError("bug")
        if sample.id == "s3" and attempts[sample.id] == 1:
            return Outcome(record=None, failed="unparsable")
        return Outcome(record={"id": sample.id, "n": 0})

    with RunStore(tmp_path, {}) as store:
        summary = await Runner(store, WRITERS, progress=False).run(_samples(5), flaky)
    assert summary.failed == {"bad_request": 1, "KeyError": 1, "unparsable": 1}
    assert len(_lines(tmp_path / "out.jsonl")) == 2
    with RunStore(tmp_path, {}) as store:
        summary = await Runner(store, WRITERS, progress=False).run(_samples(5), flaky)
        assert store.status_counts() == {"done": 5}
    assert summary.done == 3 and summary.done_before == 2 and summary.failed == {}
    assert sorted(r["id"] for r in _lines(tmp_path / "out.jsonl")) == [f"s{i}" for i in range(5)]


async def test_torn_and_unwritten_outputs_are_repaired(tmp_path):
    with RunStore(tmp_path, {}) as store:
        model = CachedModel(ScriptedModel(lambda m, p: "a"), store)
        await Runner(store, WRITERS, progress=False).run(_samples(4), _work(model))
        # a crash after the outcome commit, before the lines were written
        store.finish_sample("s9", Sample("s9", {"n": 9}).input_hash, record={"id": "s9", "n": 9})
    with open(tmp_path / "out.jsonl", "a") as f:  # a crash in the middle of a write
        f.write('{"id": "s4", "n": 4, "te')
    with RunStore(tmp_path, {}) as store:
        await Runner(store, WRITERS, progress=False).run(_samples(4), _work(CachedModel(ScriptedModel([]), store)))
    ids = [r["id"] for r in _lines(tmp_path / "out.jsonl")]
    assert sorted(ids) == ["s0", "s1", "s2", "s3", "s9"]

    (tmp_path / "even.jsonl").unlink()  # a deleted output is rebuilt from the store
    with RunStore(tmp_path, {}) as store:
        await Runner(store, WRITERS, progress=False).run(_samples(4), _work(CachedModel(ScriptedModel([]), store)))
    assert sorted(r["n"] for r in _lines(tmp_path / "even.jsonl")) == [0, 2]
    assert len(_lines(tmp_path / "out.jsonl")) == 5


def test_config_mismatch_input_change_and_lock(tmp_path):
    RunStore(tmp_path, {"model": "a", "seed": 1}).close()
    with pytest.raises(ConfigMismatchError, match=r"model: 'a' -> 'b'"):
        RunStore(tmp_path, {"model": "b", "seed": 1})
    store = RunStore(tmp_path, {"model": "a", "seed": 1})
    with pytest.raises(RunLockedError):
        RunStore(tmp_path, {"model": "a", "seed": 1})
    store.finish_sample("s0", "hash-old", record={"id": "s0"})

    async def work(sample):
        return Outcome(record={})

    with pytest.raises(ConfigMismatchError, match="s0"):
        asyncio.run(Runner(store, progress=False).run([Sample("s0", {"n": 0})], work))
    store.close()

    fresh = RunStore(tmp_path, {"model": "b"}, new_run=True)
    assert fresh.moved_to is not None and (fresh.moved_to / "state.sqlite").exists()
    assert fresh.config == {"model": "b"} and fresh.status_counts() == {}
    fresh.close()


async def test_cached_model_shares_inflight_and_skips_errors(tmp_path):
    calls = 0

    def script(messages, params):
        nonlocal calls
        calls += 1
        if messages[-1]["content"] == "boom":
            raise TransientModelError("503")
        return "hi"

    store = RunStore(None)
    model = CachedModel(ScriptedModel(script, delay=0.05), store)
    msgs = [{"role": "user", "content": "q"}]
    results = await asyncio.gather(*(model.chat(msgs) for _ in range(5)))
    assert calls == 1 and {r.text for r in results} == {"hi"}
    again = await model.chat(msgs)
    assert again.cached and calls == 1
    other = await model.chat(msgs, GenParams(max_tokens=3))  # params are part of the key
    assert not other.cached and calls == 2
    for _ in range(2):
        with pytest.raises(TransientModelError):
            await model.chat([{"role": "user", "content": "boom"}])
    assert calls == 4 and store.cached_calls == 2 and store.model_calls == 2


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from cai.models import ScriptedModel
    from cai.runner import Outcome, OutputWriter, Runner, Sample
    from cai.store import CachedModel, RunStore

    async def main():
        store = RunStore(sys.argv[1], {"model": "scripted"})
        model = CachedModel(ScriptedModel(lambda m, p: m[-1]["content"] + "!", delay=0.02), store)

        async def work(sample):
            a = await model.chat([{"role": "user", "content": sample.id}])
            b = await model.chat([{"role": "user", "content": a.text}])
            return Outcome(record={"id": sample.id, "text": b.text})

        samples = [Sample(f"s{i}", {"i": i}) for i in range(300)]
        await Runner(store, [OutputWriter("out.jsonl", lambda r: [r])], concurrency=8, progress=False).run(samples, work)

    asyncio.run(main())
    """
)


def test_kill_9_then_resume_exactly_once(tmp_path):
    run_dir = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    for _ in range(2):  # kill twice at different points, then let it finish
        proc = subprocess.Popen([sys.executable, str(script), str(run_dir)])
        deadline = time.time() + 60
        out = run_dir / "out.jsonl"
        target = 40 if not out.exists() else len(out.read_text().splitlines()) + 40
        while time.time() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= target:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = subprocess.run([sys.executable, str(script), str(run_dir)], timeout=120)
    assert proc.returncode == 0
    ids = [r["id"] for r in _lines(run_dir / "out.jsonl")]
    assert sorted(ids) == sorted(f"s{i}" for i in range(300))
    assert all(r["text"] == f"{r['id']}!!" for r in _lines(run_dir / "out.jsonl"))
    with RunStore(run_dir) as store:
        assert store.cached_calls == 600
        assert store.model_calls == 600  # no finished call was made twice


# --- seeding, batched commits, sync-over-async -------------------------------------------


async def test_sampled_calls_get_per_sample_turn_seeds_in_the_cache_key(tmp_path):
    from cai.store import current_sample, sample_scope, sample_seed

    store = RunStore(None, {"seed": 7})
    scripted = ScriptedModel(lambda m, p: f"seed {p.seed}")
    model = CachedModel(scripted, store)
    hot, ask = GenParams(temperature=0.8), [{"role": "user", "content": "same prompt"}]
    assert current_sample() is None
    with sample_scope("a"):
        assert current_sample() == "a"
        a1 = await model.chat(ask, hot)
        a2 = await model.chat([*ask, {"role": "assistant", "content": "x"}, *ask], hot)  # a later turn
        fixed = await model.chat(ask, hot.replace(seed=123))  # an explicit seed is kept
    with sample_scope("b"):
        b1 = await model.chat(ask, hot)
    assert [p.seed for _, p in scripted.calls] == [
        sample_seed(7, "a", 1),
        sample_seed(7, "a", 3),
        123,
        sample_seed(7, "b", 1),
    ]
    assert len({a1.text, a2.text, b1.text}) == 3 and fixed.text == "seed 123"
    with sample_scope("a"):  # the same sample again: its own call, from the cache
        again = await model.chat(ask, hot)
    assert again.cached and again.text == a1.text and len(scripted.calls) == 4
    cold = await model.chat(ask)  # greedy calls are never seeded
    assert scripted.calls[-1][1].seed is None and not cold.cached


async def test_an_outer_seeding_wrapper_gives_the_same_keys(tmp_path):
    """A wrapper that sets the same seed before CachedModel sees the call (as cai.generation's
    SampleSeeded did) leaves the key as CachedModel makes it: runs stay resumable either way."""
    import random

    from cai.models import ModelWrapper
    from cai.store import sample_scope

    class OuterSeed(ModelWrapper):
        async def chat(self, messages, params=None):
            params = params or GenParams()
            if params.temperature > 0 and params.seed is None:
                params = params.replace(seed=random.Random(f"0:s:{len(messages)}").getrandbits(31))
            return await self.model.chat(messages, params)

    hot, ask = GenParams(temperature=1.0), [{"role": "user", "content": "q"}]
    with RunStore(tmp_path, {"seed": 0}) as store:
        with sample_scope("s"):
            await OuterSeed(CachedModel(ScriptedModel(lambda m, p: "first"), store)).chat(ask, hot)
    with RunStore(tmp_path, {"seed": 0}) as store:
        with sample_scope("s"):
            again = await CachedModel(ScriptedModel(lambda m, p: "second"), store).chat(ask, hot)
    assert again.cached and again.text == "first"


async def test_calls_are_committed_per_tick_and_with_each_finished_sample(tmp_path):
    from cai.models.base import call_key

    store = RunStore(tmp_path, {})
    model = CachedModel(ScriptedModel(lambda m, p: "hi"), store)
    reader = RunStore(tmp_path, read_only=True)
    await model.chat([{"role": "user", "content": "a"}])
    key = call_key("scripted", [{"role": "user", "content": "a"}], GenParams())
    assert store.get_call(key) is not None  # visible before the commit
    assert reader.cached_calls == 0  # held, not committed yet
    await asyncio.sleep(0.05)  # the next tick commits it, on the writer thread
    assert reader.cached_calls == 1
    await model.chat([{"role": "user", "content": "b"}])
    store.finish_sample("s0", "h", record={"id": "s0"})  # commits the held call with the sample
    assert reader.cached_calls == 2 and reader.model_calls == 2 and reader.status_counts() == {"done": 1}
    reader.close()
    store.close()


def test_run_sync_and_background_loop():
    from cai.aio import BackgroundLoop, run_sync

    async def where() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    assert run_sync(where()) == threading.get_ident()  # no loop running: this thread

    async def inside_a_loop() -> int:
        return run_sync(where())  # a running loop: a helper thread, never re-entering this loop

    assert asyncio.run(inside_a_loop()) != threading.get_ident()
    with BackgroundLoop() as bg:
        first, second = bg.submit(where()), bg.submit(where())
        assert first == second != threading.get_ident()  # one thread for the object's life

        async def nested() -> int:
            return bg.submit(where())

        with pytest.raises(RuntimeError, match="own loop"):
            bg.submit(nested())


def test_store_writer_groups_queued_batches_and_fails_a_group_together(tmp_path, monkeypatch):
    """Batches queued while a transaction runs commit in the next one together; a transaction
    that fails fails every batch in it, and commits none of them."""
    import sqlite3

    import cai.store as store_module

    RunStore(tmp_path).close()  # the schema
    sizes: list[int] = []
    hold, release = threading.Event(), threading.Event()
    real = store_module._commit_batch

    def commit(db, *batches):
        sizes.append(len(batches))
        if hold.is_set():  # keep this transaction open while the test queues more
            hold.clear()
            release.wait(10)
        real(db, *batches)

    def held_then(batches: list) -> list:
        """Submit one batch that holds the writer, queue ``batches`` behind it, then let go."""
        hold.set()
        release.clear()
        first = writer.submit(store_module._Batch(meta={f"held{len(sizes)}": "1"}))
        while hold.is_set():  # the writer is inside the held transaction
            time.sleep(0.01)
        queued = [writer.submit(batch) for batch in batches]
        release.set()
        first.result(10)
        return queued

    monkeypatch.setattr(store_module, "_commit_batch", commit)
    writer = store_module._Writer(tmp_path / store_module.DB_NAME)
    try:
        for future in held_then([store_module._Batch(meta={f"m{i}": str(i)}) for i in range(20)]):
            future.result(10)
        assert sizes == [1, 20]

        good, bad = held_then(
            [store_module._Batch(meta={"g": "1"}), store_module._Batch(sample=("only", "three", "fields"))]
        )
        for future in (good, bad):
            with pytest.raises(sqlite3.ProgrammingError):
                future.result(10)
        assert sizes == [1, 20, 1, 2]
    finally:
        writer.close()
    with sqlite3.connect(tmp_path / store_module.DB_NAME) as db:
        keys = {k for (k,) in db.execute("SELECT key FROM meta")}
    assert {f"m{i}" for i in range(20)} <= keys
    assert "g" not in keys  # in the failed transaction with the bad batch


# --- output lines behind the commits -----------------------------------------------------


async def test_a_worker_moves_on_before_its_commit_lands_and_an_interrupt_writes_every_committed_sample(
    tmp_path, monkeypatch
):
    """Samples finish while the first one's commit is still held; cancelling the run (as Ctrl-C
    does) then waits for the commits and writes every committed sample's lines, once."""
    import cai.store as store_module

    release = threading.Event()
    held_in_time: list[bool] = []
    real = store_module._commit_group

    def held_commit(db, group):
        if any(batch.sample is not None for batch, _ in group):
            held_in_time.append(release.wait(1))  # False: the worker waited for this commit
        real(db, group)

    monkeypatch.setattr(store_module, "_commit_group", held_commit)
    three_finished = asyncio.Event()

    async def work(sample: Sample) -> Outcome:
        if sample.data["n"] == 3:
            three_finished.set()
            await asyncio.Event().wait()  # still running when the run is cancelled
        return Outcome(record={"id": sample.id, "n": sample.data["n"]})

    with RunStore(tmp_path, {}) as store:
        run = asyncio.create_task(Runner(store, WRITERS, concurrency=1, progress=False).run(_samples(4), work))
        await three_finished.wait()
        threading.Timer(0.2, release.set).start()  # the commits land while the run closes
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert store.status_counts() == {"done": 3}
    assert held_in_time and all(held_in_time)
    assert sorted(r["id"] for r in _lines(tmp_path / "out.jsonl")) == ["s0", "s1", "s2"]
    assert [r["id"] for r in _lines(tmp_path / "even.jsonl")] == ["s0", "s2"]


async def test_a_failed_output_write_stops_the_run_and_the_next_run_writes_each_sample_once(tmp_path):
    def lines(record: dict) -> list[dict]:
        if record["n"] == 2:
            raise OSError("disk full")
        return [record]

    async def work(sample: Sample) -> Outcome:
        await asyncio.sleep(0.01)
        return Outcome(record={"id": sample.id, "n": sample.data["n"]})

    with RunStore(tmp_path, {}) as store:
        with pytest.raises(OSError, match="disk full"):
            await Runner(store, [OutputWriter("out.jsonl", lines)], concurrency=1, progress=False).run(
                _samples(10), work
            )
        assert 3 <= store.status_counts()["done"] < 10  # stopped soon after the failed write
    with RunStore(tmp_path, {}) as store:
        await Runner(store, [OutputWriter("out.jsonl", lambda r: [r])], progress=False).run(_samples(10), work)
    assert sorted(r["n"] for r in _lines(tmp_path / "out.jsonl")) == list(range(10))


async def test_a_run_exempts_older_objects_from_collection_only_while_it_runs(tmp_path):
    import gc

    frozen: list[int] = []

    async def work(sample: Sample) -> Outcome:
        frozen.append(gc.get_freeze_count())
        return Outcome(record={"id": sample.id, "n": sample.data["n"]})

    before = gc.get_freeze_count()
    with RunStore(tmp_path, {}) as store:
        await Runner(store, WRITERS, progress=False).run(_samples(2), work)
    assert before == 0 and gc.get_freeze_count() == 0
    assert all(n > 0 for n in frozen)

    gc.freeze()  # a process that froze objects itself keeps them frozen
    try:
        with RunStore(tmp_path, {}) as store:
            await Runner(store, WRITERS, progress=False).run(_samples(3), work)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
