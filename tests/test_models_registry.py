"""Spec parsing, plugin entry points, the atomic export helper and the micro-batcher (no model)."""

from __future__ import annotations

import asyncio
import threading
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from cai.models import (
    ChatModel,
    Completion,
    GenParams,
    ModelSpecError,
    ScriptedModel,
    Usage,
    load_model,
    parse_spec,
    registry,
)
from cai.models.batching import MicroBatcher
from cai.models.embedded import _atomic_export, _is_complete


def make_plugin_model(model: str, **options) -> ChatModel:
    return ScriptedModel(lambda messages, params: f"{model}|{options.get('greeting', '')}", spec="")


def test_parse_spec() -> None:
    assert parse_spec("embedded") == ("embedded", "")
    assert parse_spec("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert parse_spec("hf:/models/a:b") == ("hf", "/models/a:b")
    with pytest.raises(ModelSpecError, match="no backend"):
        parse_spec("gpt-4o")
    with pytest.raises(ModelSpecError):
        parse_spec("  ")


def test_third_party_backend_through_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="mine", value="tests.test_models_registry:make_plugin_model", group="cai.models")
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == "cai.models" else [])
    assert "mine" in registry.available_backends()
    model = load_model("mine:tiny", greeting="hello")
    assert model.spec == "mine:tiny"
    assert model.chat_sync([{"role": "user", "content": "x"}]).text == "tiny|hello"


def test_usage_totals() -> None:
    total = sum((Completion("a", usage=Usage(3, 2, 1)).usage, Usage(4, 1, 1)), Usage())
    assert total.to_dict() == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "calls": 2}


# --- atomic export ------------------------------------------------------------------------


def _build(tmp: Path) -> None:
    (tmp / "weights.bin").write_text("w")
    (tmp / ".cai-export-complete").write_text("x")


def test_atomic_export_replaces_an_interrupted_leftover(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "half-written.bin").write_text("junk")  # a killed export, no completion marker
    assert _atomic_export(target, _build) == target
    assert _is_complete(target) and not (target / "half-written.bin").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / "partial").write_text("p")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _atomic_export(tmp_path / "model", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_exports_build_once(tmp_path: Path) -> None:
    builds = []

    def slow_build(tmp: Path) -> None:
        builds.append(1)
        time.sleep(0.2)
        _build(tmp)

    threads = [threading.Thread(target=_atomic_export, args=(tmp_path / "model", slow_build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and _is_complete(tmp_path / "model")


# --- micro-batcher ------------------------------------------------------------------------


async def test_batcher_groups_concurrent_requests_and_keeps_order() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: [x * 10 for x in xs], max_batch_size=8)
    results = await asyncio.gather(*(asyncio.wrap_future(batcher.submit(i)) for i in range(8)))
    assert results == [i * 10 for i in range(8)]
    assert batcher.batch_sizes == [8]
    batcher.close()


async def test_batcher_errors_reach_callers_and_worker_survives() -> None:
    def run(xs):
        if 0 in xs:
            raise ValueError("boom")
        return [ValueError("bad item") if x == 2 else x for x in xs]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=1)
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wrap_future(batcher.submit(0))
    with pytest.raises(ValueError, match="bad item"):
        await asyncio.wrap_future(batcher.submit(2))
    assert await asyncio.wrap_future(batcher.submit(1)) == 1
    batcher.close()


async def test_batcher_skips_requests_cancelled_before_their_batch() -> None:
    started = threading.Event()
    release = threading.Event()
    seen: list[list[int]] = []

    def run(xs):
        seen.append(list(xs))
        started.set()
        release.wait(5)
        return xs

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=1)
    first = asyncio.wrap_future(batcher.submit(1))
    await asyncio.to_thread(started.wait, 5)
    second = asyncio.ensure_future(asyncio.wrap_future(batcher.submit(2)))
    await asyncio.sleep(0)
    second.cancel()
    await asyncio.sleep(0.05)  # the cancellation reaches the queued request
    release.set()
    assert await first == 1
    assert await asyncio.wrap_future(batcher.submit(3)) == 3
    assert seen == [[1], [3]]
    batcher.close()


def test_chat_sync_works_inside_a_running_loop() -> None:
    model = ScriptedModel(["x", "y"])
    assert model.chat_sync([{"role": "user", "content": "hi"}]).text == "x"

    async def inside() -> str:  # e.g. a Jupyter cell
        return model.chat_sync([{"role": "user", "content": "hi"}], GenParams()).text

    assert asyncio.run(inside()) == "y"


def scripted_upper(messages, params) -> str:
    return messages[-1]["content"].upper()


def test_scripted_spec_builds_a_scripted_model() -> None:
    model = load_model("scripted:tests.test_models_registry:scripted_upper", delay=0.0)
    assert isinstance(model, ScriptedModel)
    assert model.spec == "scripted:tests.test_models_registry:scripted_upper"
    assert model.chat_sync([{"role": "user", "content": "shout"}]).text == "SHOUT"
    with pytest.raises(ModelSpecError, match="expected 'scripted:MODULE:FUNCTION'"):
        load_model("scripted:no_function")
    with pytest.raises(ModelSpecError, match="cannot import 'missing' from 'tests.test_models_registry'"):
        load_model("scripted:tests.test_models_registry:missing")
