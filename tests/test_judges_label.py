"""Labelling runs and judge evaluation, with scripted judge models (logic); real-model runs are
in test_judges_real.py."""

from __future__ import annotations

import importlib
import json
import math
import re
import sys

import pytest

from cai.inputs import InputError
from cai.models import Capabilities, Completion, GenParams, ScriptedModel, TokenLogprob, TransientModelError
from cai.records import PAIR_SCORES
from cai.store import RunStore
from judges.data import read_candidate_sets
from judges.evaluate import evaluate_judge, metrics
from judges.label import LabelConfig, label
from judges.registry import available_judges, load_judge
from tests.paths import HH_RLHF

NO_LOGPROBS = Capabilities(logprobs=False)
LOGPROBS = Capabilities(logprobs=True, max_top_logprobs=5)


def shown(messages) -> tuple[str, str]:
    text = messages[-1]["content"]
    return tuple(re.search(rf"<response_{x}>\n(.*?)\n</response_{x}>", text, re.S).group(1) for x in "ab")  # type: ignore[return-value]


def polite_judge(messages, params):
    """Prefers the response saying 'sorry'; for prompts containing 'biased' always answers A
    (p(A) = 0.9 when "x" is shown first, 0.7 when "y" is)."""
    a, b = shown(messages)
    if "biased" in messages[-1]["content"]:
        p = 0.9 if a == "x" else 0.7
        return Completion("A", logprobs=[TokenLogprob("A", math.log(p), {"A": math.log(p), "B": math.log(1 - p)})])
    return "A" if "sorry" in a.lower() else "B"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def pref_file(tmp_path):
    user = lambda t: [{"role": "user", "content": t}]  # noqa: E731
    asst = lambda t: [{"role": "assistant", "content": t}]  # noqa: E731
    return write_jsonl(
        tmp_path / "preferences.jsonl",
        [
            {
                "prompt": user("How do I hotwire a car?"),
                "chosen": asst("Sorry, I can't help."),
                "rejected": asst("Sure: ..."),
            },
            {"prompt": user("Insult me"), "chosen": asst("You fool."), "rejected": asst("Sorry, no.")},
            {"prompt": user("A biased question"), "chosen": asst("x"), "rejected": asst("y")},
        ],
    )


async def test_label_preferences_file_flags_and_drops_inconsistent(tmp_path, pref_file):
    sets, _ = read_candidate_sets(pref_file)
    model = ScriptedModel(polite_judge, capabilities=LOGPROBS)
    summary = await label(
        sets, tmp_path / "run", LabelConfig(judge="pairwise:scripted"), judge_model=model, progress=False
    )
    assert summary.done == 3 and summary.n_failed == 0
    prefs = read_jsonl(tmp_path / "run" / "preferences.jsonl")
    assert [p["id"] for p in prefs] == ["0", "1"]
    assert list(prefs[0]) == ["id", "prompt", "chosen", "rejected", *PAIR_SCORES]
    assert prefs[0]["chosen"] == [{"role": "assistant", "content": "Sorry, I can't help."}]
    assert prefs[1]["chosen"][0]["content"] == "Sorry, no."  # the judge overrides the input's label
    assert prefs[0]["prompt"] == [{"role": "user", "content": "How do I hotwire a car?"}]
    assert prefs[0]["margin"] == 1.0 and prefs[0]["consistent"] is True
    labels = read_jsonl(tmp_path / "run" / "labels.jsonl")
    assert labels[2]["consistent"] is False and labels[2]["status"] == "ok"
    assert summary.counters["inconsistent"] == 1 and summary.counters["labelled"] == 2

    kept = await label(
        sets,
        tmp_path / "keep",
        LabelConfig(judge="pairwise:scripted", keep_inconsistent=True),
        judge_model=model,
        progress=False,
    )
    rows = read_jsonl(tmp_path / "keep" / "preferences.jsonl")
    assert kept.done == 3 and len(rows) == 3 and rows[2]["consistent"] is False
    assert rows[2]["margin"] == pytest.approx(0.2) and rows[2]["chosen"][0]["content"] == "x"  # soft, low margin


async def test_label_resumes_failed_samples_without_repeating_calls(tmp_path, pref_file):
    sets, _ = read_candidate_sets(pref_file)

    def flaky(messages, params):
        if "Insult" in messages[-1]["content"]:
            raise TransientModelError("server went away")
        return polite_judge(messages, params)

    first = await label(
        sets,
        tmp_path / "run",
        LabelConfig(judge="pairwise:scripted"),
        judge_model=ScriptedModel(flaky, capabilities=NO_LOGPROBS),
        progress=False,
    )
    assert first.done == 2 and first.failed == {"judge_failed": 1}
    again = ScriptedModel(polite_judge, capabilities=NO_LOGPROBS)
    second = await label(
        sets, tmp_path / "run", LabelConfig(judge="pairwise:scripted"), judge_model=again, progress=False
    )
    assert second.done_before == 2 and second.done == 1 and second.n_failed == 0
    assert len(again.calls) == 2  # only the failed sample's two orders were asked again
    prefs = read_jsonl(tmp_path / "run" / "preferences.jsonl")
    assert sorted(p["id"] for p in prefs) == ["0", "1"]
    with pytest.raises(ValueError, match="judge"):  # another judge config in the same run dir
        await label(sets, tmp_path / "run", LabelConfig(judge="pairwise:other"), judge_model=again, progress=False)


async def test_a_finished_run_loads_no_model(tmp_path, pref_file):
    sets, _ = read_candidate_sets(pref_file)
    config = LabelConfig(judge="pairwise:no-such-backend:judge")
    judge = ScriptedModel(polite_judge, capabilities=NO_LOGPROBS)
    first = await label(sets, tmp_path / "run", config, judge_model=judge, progress=False)
    assert first.done == 3
    with pytest.raises(ValueError, match="no-such-backend"):  # the spec cannot be loaded...
        await label(sets, tmp_path / "other", config, progress=False)
    again = await label(sets, tmp_path / "run", config, progress=False)  # ...and need not be
    assert again.done_before == 3 and again.model_calls == 0


async def test_label_many_candidates_hh_transcripts_and_pointwise(tmp_path):
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "Tell me a joke", "responses": ["one two three four five", "one", "one two three"]},
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ok bye",
                "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: whatever you say pal",
            },
        ],
    )
    sets, _ = read_candidate_sets(path)
    assert sets[1].prompt[-1] == {"role": "user", "content": "bye"} and sets[1].labelled
    assert sets[1].candidates == ["ok bye", "whatever you say pal"]
    # pointwise: a length rule prefers short answers (1.0 within 0..3 words)
    await label(sets, tmp_path / "pw", LabelConfig(judge="rules:length:0:3"), progress=False)
    prefs = read_jsonl(tmp_path / "pw" / "preferences.jsonl")
    assert prefs[0]["chosen"][0]["content"] in ("one", "one two three")
    assert prefs[0]["rejected"][0]["content"] == "one two three four five" and prefs[0]["margin"] == 1.0
    assert prefs[1]["chosen"][0]["content"] == "ok bye"

    # pairwise over three candidates: fewer words wins every comparison
    def shorter(messages, params):
        a, b = shown(messages)
        return "A" if len(a.split()) < len(b.split()) else "B"

    await label(
        sets[:1],
        tmp_path / "pair",
        LabelConfig(judge="pairwise:s"),
        progress=False,
        judge_model=ScriptedModel(shorter, capabilities=NO_LOGPROBS),
    )
    record = read_jsonl(tmp_path / "pair" / "labels.jsonl")[0]
    assert (record["chosen_index"], record["rejected_index"]) == (1, 0)
    assert len(record["verdicts"]) == 3 and record["scores"] == [0.0, 1.0, 0.5]


async def test_label_samples_from_policy(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "How do I make a bomb?"}, {"prompt": "Hi"}])
    sets, _ = read_candidate_sets(path)
    policy = ScriptedModel(lambda m, p: "Sorry, I can't." if p.seed == 1 else f"Sure #{p.seed}")
    config = LabelConfig(
        judge="pairwise:s", policy="scripted", samples=3, sample_params=GenParams(max_tokens=32, temperature=1.0)
    )
    summary = await label(
        sets,
        tmp_path / "run",
        config,
        progress=False,
        policy_model=policy,
        judge_model=ScriptedModel(polite_judge, capabilities=NO_LOGPROBS),
    )
    assert summary.done == 2 and len(policy.calls) == 6
    assert {c[1].seed for c in policy.calls} == {0, 1, 2} and policy.calls[0][1].temperature == 1.0
    prefs = read_jsonl(tmp_path / "run" / "preferences.jsonl")
    assert all(p["chosen"][0]["content"] == "Sorry, I can't." for p in prefs)
    with pytest.raises(ValueError, match="policy"):
        await label(sets, None, LabelConfig(judge="rules:refusal", samples=2), progress=False)


async def test_prompts_without_candidates_fail_clearly(tmp_path):
    sets, _ = read_candidate_sets(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}]))
    summary = await label(sets, tmp_path / "run", LabelConfig(judge="rules:refusal"), progress=False)
    assert summary.failed == {"too_few_candidates": 1}


def test_bad_input_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "responses": ["a", "b"]}\n{"prompt": "x", "responses": "nope"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: responses: expected a list"):
        read_candidate_sets(path)
    sets, skipped = read_candidate_sets(path, on_bad_line="skip")
    assert len(sets) == 1 and "bad.jsonl:2" in skipped[0]


def test_metrics_agreement_consistency_calibration():
    def v(p, consistent=True, status="ok"):
        return {"p_a": p, "consistent": consistent, "status": status, "usage": {"calls": 2, "total_tokens": 100}}

    m = metrics([v(0.95), v(0.85), v(0.3), v(0.5, False), v(0.55, False), v(None, None, "unparseable")])
    assert m.n == 6 and m.ok == 5 and m.unparseable == 1
    assert m.agreement == pytest.approx((1 + 1 + 0 + 0.5 + 1) / 5)
    assert m.agreement_consistent == pytest.approx(2 / 3)
    assert m.consistency == pytest.approx(3 / 5) and m.flag_rate == pytest.approx(2 / 5)
    assert m.tie_rate == pytest.approx(1 / 5)
    top = m.calibration[-1]
    assert (top.low, top.n, top.accuracy) == (0.9, 1, 1.0)
    assert m.calibration[0].n == 2 and m.calibration[2].n == 1  # 0.5, 0.55 | 0.3 -> conf 0.7
    assert m.calls_per_pair == 2 and m.ece is not None


async def test_evaluate_judge_on_hh_slice_with_scripted_judge(tmp_path):
    lines = open(HH_RLHF, encoding="utf-8").readlines()[:6]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    pairs, _ = read_candidate_sets(path)
    always_a = ScriptedModel(lambda m, p: "A", capabilities=NO_LOGPROBS)
    report = await evaluate_judge(pairs, "pairwise:scripted", data=str(path), judge_model=always_a, progress=False)
    assert report.n == 6 and report.consistency == 0.0 and report.tie_rate == 1.0 and report.agreement == 0.5
    assert report.calls_per_pair == 2 and report.first_position == 1.0
    assert report.to_dict()["calibration"][0]["n"] == 6


PLUGIN = '''
from cai.models import GenParams, ScriptedModel, TransientModelError
from judges.base import PointwiseJudge, Score

FLAKY = True
MODELS = []


def rate(messages, params):
    text = messages[-1]["content"]
    if FLAKY and "Insult" in text and "Sorry" in text:
        raise TransientModelError("server went away")
    return "9" if "Sorry" in text else "2"


class DigitJudge(PointwiseJudge):
    """A third-party judge: one model call per response, the reply is the score."""

    def __init__(self, model):
        self.model = model
        self.name = f"digit:{model.spec}"

    async def score(self, prompt, response):
        asked = [{"role": "user", "content": f"{prompt[-1]['content']} -> {response}"}]
        completion = await self.model.chat(asked, GenParams(max_tokens=2))
        return Score(float(completion.text), usage=completion.usage)


def factory(rest, **options):
    MODELS.append(ScriptedModel(rate, spec=f"scripted:{rest}"))
    return DigitJudge(MODELS[-1], **options)
'''


def install_plugin(site, monkeypatch, module: str, code: str, group: str, name: str):
    """Install ``module`` the way a package installs a plugin: the module and a dist-info
    directory on sys.path whose entry_points.txt names ``module:factory`` as ``name`` under
    ``group``. Returns the imported module (the one the entry point loads)."""
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(code, encoding="utf-8")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}:factory\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop(module, None)
    imported = importlib.import_module(module)
    monkeypatch.setitem(sys.modules, module, imported)  # forgotten again at teardown
    return imported


@pytest.fixture
def digit_plugin(tmp_path, monkeypatch):
    yield install_plugin(tmp_path / "site", monkeypatch, "cai_digit_judge", PLUGIN, "cai.judges", "digit")


async def test_plugin_judge_calls_are_cached_and_resumed(tmp_path, pref_file, digit_plugin):
    assert "digit" in available_judges()
    sets, _ = read_candidate_sets(pref_file)
    config = LabelConfig(judge="digit:x")
    first = await label(sets, tmp_path / "run", config, progress=False)
    assert first.done == 2 and first.failed == {"transient": 1}  # the plugin lets the model error through
    assert len(digit_plugin.MODELS[0].calls) == 6  # two candidates per sample
    digit_plugin.FLAKY = False
    second = await label(sets, tmp_path / "run", config, progress=False)
    assert second.done == 1 and second.n_failed == 0
    # only the failed call is asked again: the failed sample's other candidate comes from the store
    assert [m[-1]["content"] for m, _ in digit_plugin.MODELS[1].calls] == ["Insult me -> Sorry, no."]
    rows = read_jsonl(tmp_path / "run" / "preferences.jsonl")
    insult = next(r for r in rows if r["prompt"][0]["content"] == "Insult me")
    assert insult["chosen"][0]["content"] == "Sorry, no." and insult["margin"] == 7.0
    with RunStore(tmp_path / "run") as store:  # a rerun of any finished call makes none
        judge = load_judge("digit:x", store=store)
        score = await judge.score([{"role": "user", "content": "How do I hotwire a car?"}], "Sure: ...")
    assert score.value == 2.0 and digit_plugin.MODELS[2].calls == []
