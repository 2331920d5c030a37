"""`cai generate --verify JUDGE`: judge-verified pairs (scripted judge for the logic, the
embedded model once), with the verdicts in the rows, the rejected list and report.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.models import Completion, ScriptedModel, Usage
from cai.models.base import TokenLogprob
from cai.stats import run_stats
from cai.store import RunStore
from tests.quality_runs import INITIAL, PROMPTS, REVISED, scripted_run


def _judge_model(p_first_by_pair: dict[str, tuple[float, float] | None]) -> ScriptedModel:
    """A judge model answering the A/B question with log-probs: for each pair (found by the
    revision's text) p(first shown better) in the order (revision, initial) and swapped;
    None = an unreadable answer."""

    def script(messages, params):
        text = messages[-1]["content"]
        key = next(k for k, v in REVISED.items() if v in text)
        probs = p_first_by_pair[key]
        if probs is None:
            return Completion(text="hmm", usage=Usage(1, 1, 1), model="judge")
        revision_first = text.index(REVISED[key]) < text.index(INITIAL[key])
        p = probs[0] if revision_first else probs[1]
        answer = "A" if p > 0.5 else "B"
        top = {"A": math.log(p), "B": math.log(1 - p)}
        return Completion(
            text=answer, usage=Usage(1, 1, 1), model="judge", logprobs=[TokenLogprob(answer, top[answer], top)]
        )

    return ScriptedModel(script, spec="judge")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    "probs, kept, reason",
    [
        ((0.9, 0.2), True, None),  # the revision wins in both orders (p_first 0.9, then 0.2 for the initial)
        ((0.2, 0.9), False, "initial_wins"),
        ((0.9, 0.9), False, "inconsistent"),  # position bias: the first shown always wins
        ((0.56, 0.46), False, "low_margin"),
        (None, False, "unparseable"),
    ],
)
async def test_verify_keeps_drops_and_abstains(tmp_path, probs, kept, reason):
    from judges.pairwise import LLMPairwiseJudge

    judge = LLMPairwiseJudge(_judge_model({"good": probs, "second": (0.9, 0.2)}))
    result = await scripted_run(tmp_path / "run", verify=judge, min_margin=0.2)
    pairs = {row["prompt"][-1]["content"]: row for row in _rows(tmp_path / "run" / "preferences.jsonl")}
    rejected = _rows(tmp_path / "run" / "rejected_pairs.jsonl")
    good = PROMPTS["good"]
    assert PROMPTS["second"] in pairs and pairs[PROMPTS["second"]]["margin"] == pytest.approx(0.7)
    assert pairs[PROMPTS["second"]]["score_chosen"] == pytest.approx(0.85)
    assert pairs[PROMPTS["second"]]["consistent"] is True
    if kept:
        assert pairs[good]["score_chosen"] > pairs[good]["score_rejected"] and pairs[good]["margin"] >= 0.2
        assert rejected == []
    else:
        assert good not in pairs
        assert [r["verdict"]["reason"] for r in rejected] == [reason]
        assert rejected[0]["chosen"][0]["content"] == REVISED["good"]
        assert result.summary.counters[f"judge_{reason}"] == 1
    stats = run_stats(tmp_path / "run")
    assert stats["judge"]["verified"] == 2 and stats["judge"]["kept"] == 1 + kept
    assert stats["funnel"]["pairs"] == 1 + kept
    if reason == "inconsistent":
        assert stats["judge"]["first_position_share"] == pytest.approx(0.75)  # 3 of 4 answers picked the first


async def test_verify_config_is_recorded_and_resume_repeats_no_judge_call(tmp_path):
    from judges.pairwise import LLMPairwiseJudge

    model = _judge_model({"good": (0.9, 0.2), "second": (0.9, 0.2)})
    await scripted_run(tmp_path / "run", verify=LLMPairwiseJudge(model), min_margin=0.2)
    with RunStore(tmp_path / "run", read_only=True) as store:
        assert store.config["verify"]["min_margin"] == 0.2
        assert store.config["quality"]["on_truncated"] == "keep"


def test_bad_verify_spec_and_gate_are_clear_errors(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(prompts), "--out", str(tmp_path / "r"), "--verify", "nonsense:x"])
    assert result.exit_code == 2 and "unknown judge kind 'nonsense'" in result.output
    result = runner.invoke(app, ["generate", str(prompts), "--out", str(tmp_path / "r2"), "--gate", "ngram=none"])
    assert result.exit_code == 2 and "--gate 'ngram=none': bad value for ngram" in result.output


@pytest.mark.slow
async def test_verify_with_the_embedded_judge(tmp_path):
    """The real small judge over the scripted run: every revised pair gets a verdict, and a
    rerun repeats no judge call (the verdicts come from the run store)."""
    out = tmp_path / "run"
    result = await scripted_run(out, verify="pairwise:embedded", min_margin=0.0)
    assert result.summary.n_failed == 0
    with RunStore(out, read_only=True) as store:
        traces = [r.record for r in store.samples("done")]
        calls = store.model_calls
    verdicts = [t["metadata"]["verify"] for t in traces if "verify" in t["metadata"]]
    assert len(verdicts) == 2
    for v in verdicts:
        assert v["status"] in ("ok", "unparseable") and v["judge"] == "pairwise:embedded"
        assert v["kept"] or v["reason"] in ("initial_wins", "inconsistent", "tie", "unparseable", "low_margin")
        assert v["details"][0]["orders"]  # both orders asked
    kept = sum(v["kept"] for v in verdicts)
    assert len(_rows(out / "preferences.jsonl")) == kept
    assert len(_rows(out / "rejected_pairs.jsonl")) == 2 - kept
    again = await scripted_run(out, verify="pairwise:embedded", min_margin=0.0)
    assert again.summary.done == 0 and again.summary.model_calls == 0
    with RunStore(out, read_only=True) as store:
        assert store.model_calls == calls
