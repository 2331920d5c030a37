"""What a run tells its user: pair counts, why a run made no pair, exit codes, seeded sampling."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cai.cli import app
from cai.commands.generate import why_no_pairs
from cai.generation import agenerate_run
from cai.models import GenParams, ScriptedModel


def _nothing_to_fix(messages, params):
    if "No revision needed" in messages[-1]["content"]:
        return "No revision needed."
    return "A fine first answer."


async def test_why_no_pairs_counts_the_reasons(tmp_path):
    res = await agenerate_run(["a", "b", "c"], model=ScriptedModel(_nothing_to_fix), out=tmp_path / "run", revisions=2)
    assert not (tmp_path / "run" / "preferences.jsonl").read_text().strip()
    message = why_no_pairs(res.traces)
    assert message.startswith("no preference pairs: of 3 samples, 3 stopped early")
    assert "try:" in message and "--temperature" in message


def test_cli_empty_prompt_file_is_an_error(tmp_path):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("\n")
    result = CliRunner().invoke(app, ["generate", str(empty), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert f"{empty}: no prompts" in result.output and "Traceback" not in result.output


def test_cli_train_dpo_on_a_run_without_pairs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "preferences.jsonl").write_text("")
    result = CliRunner().invoke(app, ["train", "dpo", str(run), "--out", str(tmp_path / "model")])
    assert result.exit_code == 2, result.output
    assert f"{run / 'preferences.jsonl'}: no preference pairs" in result.output
    assert "StopIteration" not in result.output and "Traceback" not in result.output


async def test_sampled_runs_are_seeded_per_sample_and_per_call(tmp_path):
    seen: list[tuple[str, int, int | None]] = []

    def record(messages, params):
        seen.append((messages[-1]["content"][:20], len(messages), params.seed))
        return f"answer {len(seen)}"

    params = GenParams(temperature=0.7, max_tokens=16)
    out = tmp_path / "run"
    await agenerate_run(
        ["same prompt", "same prompt"], model=ScriptedModel(record), out=out, revisions=1, params=params, few_shot=False
    )
    first_calls = [s for s in seen if s[1] == 1]
    assert len(first_calls) == 2 and first_calls[0][2] != first_calls[1][2]  # duplicates are independent
    assert all(s[2] is not None for s in seen)
    assert len({s[2] for s in seen}) == len(seen)  # no two calls share random numbers
    initials = [json.loads(line)["initial"] for line in (out / "traces.jsonl").read_text().splitlines()]
    assert len(set(initials)) == 2

    first_run = list(seen)
    seen.clear()
    await agenerate_run(
        ["same prompt", "same prompt"],
        model=ScriptedModel(record),
        out=tmp_path / "again",
        revisions=1,
        params=params,
        few_shot=False,
    )
    assert sorted(s[2] for s in seen) == sorted(s[2] for s in first_run)  # a rerun reproduces the draws
