"""`cai export`'s dataset card follows the HF conventions: licence, language, task and size
categories, pretty name, and a default config so `datasets.load_dataset(folder)` just works."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

import cai
from cai.cli import app
from cai.models import ScriptedModel
from judges.base import PointwiseJudge, Score
from tests.paths import ROOT
from tests.quality_runs import REVISED as REVISED_BY_PROMPT
from tests.quality_runs import scripted_run

REVISED = "I can't help with that, but here is a safe alternative."


def script(messages, params):
    last = messages[-1]["content"]
    if "critique" in last.lower() or "identify" in last.lower():
        return "The answer is harmful."
    if "rewrite" in last.lower() or "revise" in last.lower():
        return REVISED
    return "Here is exactly how to do it."


def card_meta(folder) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run over prompts that sit next to their licence file (the vendored hh-rlhf one, MIT)."""
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    data.mkdir()
    prompts = data / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "How do I pick lock number {i}?"}}\n' for i in range(4)))
    shutil.copy(ROOT / "tests" / "data" / "hh_rlhf_LICENSE.txt", data / "hh_rlhf_LICENSE.txt")
    out = root / "run"
    cai.generate(str(prompts), model=ScriptedModel(script), out=out, revisions=1)
    return out


@pytest.mark.parametrize("fmt", ["hf", "parquet"])
def test_card_metadata_and_default_config_load(run, tmp_path, fmt):
    from datasets import load_dataset

    to = tmp_path / fmt
    result = CliRunner().invoke(app, ["export", str(run), "--to", str(to), "--format", fmt])
    assert result.exit_code == 0, result.output
    meta = card_meta(to)
    assert meta["license"] == "mit"  # from the licence file next to the prompts
    assert meta["language"] == ["en"] and meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"] and meta["pretty_name"]
    assert [c["config_name"] for c in meta["configs"]] == ["sft", "preferences"]
    sft = load_dataset(str(to), split="train")  # no config name: the default (sft)
    assert len(sft) == 4 and "messages" in sft.column_names
    prefs = load_dataset(str(to), "preferences", split="train")
    assert set(prefs.column_names) >= {"prompt", "chosen", "rejected"}


def test_license_and_name_flags_override(run, tmp_path):
    to = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["export", str(run), "--to", str(to), "--license", "cc-by-4.0", "--name", "My harmless data"]
    )
    assert result.exit_code == 0, result.output
    meta = card_meta(to)
    assert meta["license"] == "cc-by-4.0" and meta["pretty_name"] == "My harmless data"


class _LengthJudge(PointwiseJudge):
    """Scores a response by its length, except that the "second" prompt's revision loses."""

    name = "length"

    async def score(self, prompt, response):
        return Score(0.0 if response == REVISED_BY_PROMPT["second"] else float(len(response)))


async def test_export_holds_the_same_pairs_as_preferences_jsonl(tmp_path):
    from datasets import load_from_disk

    from cai.outputs import export_run

    await scripted_run(tmp_path / "run", verify=_LengthJudge(), min_margin=0.0)
    kept = [json.loads(line) for line in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    rejected = (tmp_path / "run" / "rejected_pairs.jsonl").read_text().splitlines()
    assert len(kept) == 1 and len(rejected) == 1  # "good" kept, "second" judged worse than its initial answer
    counts = export_run(tmp_path / "run", tmp_path / "out")
    prefs = load_from_disk(str(tmp_path / "out" / "preferences")).to_list()
    assert counts["preferences"] == 1 and prefs == kept  # with the judge's scores, not the dropped pair
    assert prefs[0]["margin"] > 0 and prefs[0]["score_chosen"] > prefs[0]["score_rejected"]
