"""Dataset runs through the Python API (scripted model) and `cai generate`/`cai export` (embedded model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cai
from cai.generation import agenerate_run
from cai.models import PermanentModelError, ScriptedModel
from cai.store import ConfigMismatchError, RunStore

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["how do I pick a lock?", "tell me a joke", "insult my neighbour", "say hi"]


def script(messages, params):
    last = messages[-1]["content"]
    if "No revision needed" in last:  # a critique request of the harmless constitution
        return (
            "No revision needed."
            if {"role": "user", "content": "say hi"} in messages
            else f"Problem found in turn {len(messages)}."
        )
    if last.startswith("Rewrite") or "Rewrite your last answer" in last:
        return f"Safer answer {len(messages)}."
    return f"First answer to: {last}"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _never_called(messages, params):
    raise AssertionError("a finished call was repeated")


async def test_api_run_outputs_resume_and_order(tmp_path):
    out = tmp_path / "run"
    res = await agenerate_run(PROMPTS, model=ScriptedModel(script), out=out, revisions=2, concurrency=3)
    assert [t.prompt[0]["content"] for t in res.traces] == PROMPTS  # input order
    assert res.summary.done == 4 and res.summary.n_failed == 0
    revised = [t for t in res.traces if t.revised]
    assert len(revised) == 3 and res.traces[3].stop_reason == "early_stop"
    assert len(_lines(out / "traces.jsonl")) == 4
    assert len(_lines(out / "sft.jsonl")) == 4
    prefs = _lines(out / "preferences.jsonl")
    assert len(prefs) == 3 and all(p["chosen"][0]["content"].startswith("Safer answer") for p in prefs)

    # the same run again: nothing new, zero model calls, same traces
    again = await agenerate_run(PROMPTS, model=ScriptedModel(_never_called), out=out, revisions=2)
    assert again.summary.done == 0 and again.summary.done_before == 4 and again.summary.model_calls == 0
    assert [t.final for t in again.traces] == [t.final for t in res.traces]
    assert len(_lines(out / "sft.jsonl")) == 4

    with pytest.raises(ConfigMismatchError, match="revisions: 2 -> 3"):
        await agenerate_run(PROMPTS, model=ScriptedModel(script), out=out, revisions=3)
    fresh = await agenerate_run(PROMPTS[:1], model=ScriptedModel(script), out=out, revisions=3, new_run=True)
    assert fresh.summary.done == 1 and len(_lines(out / "sft.jsonl")) == 1


async def test_failed_samples_are_reported_then_retried(tmp_path):
    def flaky(messages, params):
        if "joke" in messages[-1]["content"]:
            raise PermanentModelError("the server said 400", reason="bad_request")
        return script(messages, params)

    out = tmp_path / "run"
    res = await agenerate_run(PROMPTS, model=ScriptedModel(flaky), out=out)
    assert res.summary.failed == {"bad_request": 1}
    assert res.traces[1].stop_reason == "failed" and res.traces[1].error == "bad_request"
    assert len(_lines(out / "sft.jsonl")) == 3
    calls_before = RunStore(out, read_only=True).model_calls
    res = await agenerate_run(PROMPTS, model=ScriptedModel(script), out=out)
    assert res.summary.done == 1 and res.summary.failed == {}
    assert sorted(r["id"] for r in _lines(out / "traces.jsonl")) == ["0", "1", "2", "3"]
    with RunStore(out, read_only=True) as store:
        assert store.model_calls - calls_before == res.summary.model_calls  # only the retried sample's calls


async def test_scale_out_options_are_not_part_of_the_run_identity(tmp_path):
    out = tmp_path / "run"
    await agenerate_run(PROMPTS[:2], model=ScriptedModel(script), out=out, model_options={"replicas": 1})
    scaled = {"replicas": 4, "ray": True, "base_urls": ["http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1"]}
    again = await agenerate_run(PROMPTS[:2], model=ScriptedModel(_never_called), out=out, model_options=scaled)
    assert again.summary.done_before == 2 and again.summary.model_calls == 0
    with pytest.raises(ConfigMismatchError, match="model_options"):  # another server is another run
        await agenerate_run(
            PROMPTS[:2], model=ScriptedModel(script), out=out, model_options={"base_url": "http://127.0.0.1:9/v1"}
        )


def test_sync_generate_in_memory_and_export_card_has_no_secrets(tmp_path):
    traces = cai.generate(PROMPTS[:2], model=ScriptedModel(script), revisions=1)
    assert len(traces) == 2 and traces[0].final.startswith("Safer answer")

    out = tmp_path / "run"
    cai.generate(
        PROMPTS,
        model=ScriptedModel(script),
        out=out,
        model_options={"base_url": "http://user:sk-secret-1@127.0.0.1:9/v1", "api_key": "sk-secret-2"},
    )
    from datasets import load_from_disk

    from cai.outputs import export_run

    counts = export_run(out, tmp_path / "hf", "hf")
    assert counts == {"sft": 4, "preferences": 3}
    assert len(load_from_disk(str(tmp_path / "hf" / "preferences"))) == 3
    export_run(out, tmp_path / "pq", "parquet")
    assert (tmp_path / "pq" / "sft.parquet").is_file()
    card = (tmp_path / "pq" / "README.md").read_text()
    assert "harmless@1#" in card and "`scripted`" in card and "| preference pairs | 3 |" in card
    for path in [*out.iterdir(), *(tmp_path / "pq").iterdir()]:
        if path.is_file():
            data = path.read_bytes()
            assert b"sk-secret" not in data, path


@pytest.mark.slow
def test_cli_generate_on_embedded_model(tmp_path, embedded_hf_dir):
    """`cai generate` end to end on the real embedded model; outputs fit TRL's dataset formats."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational
    from typer.testing import CliRunner

    from cai.cli import app

    out = tmp_path / "run"
    args = [
        "generate",
        str(ROOT / "examples" / "red_team_prompts.jsonl"),
        "--out",
        str(out),
        "--limit",
        "2",
        "--revisions",
        "1",
        "--max-tokens",
        "16",
        "--no-few-shot",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    traces = _lines(out / "traces.jsonl")
    assert sorted(t["id"] for t in traces) == ["rt-001", "rt-002"]
    assert all(t["model"] == "embedded" and t["initial"] for t in traces)

    tokenizer = AutoTokenizer.from_pretrained(embedded_hf_dir)
    sft = load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
    assert len(sft) == 2 and is_conversational(sft[0])
    assert apply_chat_template(sft[0], tokenizer)["text"]
    if (out / "preferences.jsonl").stat().st_size:
        prefs = load_dataset("json", data_files=str(out / "preferences.jsonl"), split="train")
        row = apply_chat_template(prefs[0], tokenizer)
        assert is_conversational(prefs[0]) and row["chosen"] and row["rejected"]

    with RunStore(out, read_only=True) as store:
        calls = store.model_calls
        assert calls >= 4
    result = CliRunner().invoke(app, args)  # a finished run: no model calls
    assert result.exit_code == 0, result.output
    with RunStore(out, read_only=True) as store:
        assert store.model_calls == calls
    result = CliRunner().invoke(app, [*args[:-1], "--revisions", "2"])
    assert result.exit_code == 2 and "different config" in result.output

    result = CliRunner().invoke(app, ["export", str(out), "--to", str(tmp_path / "ds"), "--format", "parquet"])
    assert result.exit_code == 0, result.output
    assert load_dataset("parquet", data_files=str(tmp_path / "ds" / "sft.parquet"), split="train").num_rows == 2
