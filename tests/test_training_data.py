"""Training logic without a model: data adapters, recipes, provenance lookup, CLI wiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.paths import HH_RLHF
from training.data import DataError, preference_dataset, prompt_dataset, sft_dataset, unpaired_dataset
from training.recipes import RecipeError, load_recipe, recipe_for, shipped_recipes

PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]
GOOD = {"role": "assistant", "content": "I can't help with breaking in; a locksmith can."}
BAD = {"role": "assistant", "content": "Sure, rake the pins."}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def pair(i: int = 0) -> dict:
    return {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [GOOD], "rejected": [BAD]}


def test_sft_records_split_into_prompt_and_completion(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [*PROMPT, GOOD]}] * 3)
    splits = sft_dataset(path)
    row = splits.train[0]
    assert row["prompt"] == PROMPT and row["completion"] == [GOOD]
    whole = sft_dataset(path, split_completion=False).train[0]
    assert whole["messages"] == [*PROMPT, GOOD]
    assert splits.data_hash == sft_dataset(path).data_hash
    assert splits.data_hash != sft_dataset([{"messages": [*PROMPT, BAD]}]).data_hash


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": PROMPT, "chosen": [GOOD]}, "missing field(s) 'rejected'"),
        (
            {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": " "}], "rejected": [BAD]},
            "field 'chosen': empty",
        ),
        ({"prompt": PROMPT, "chosen": [GOOD], "rejected": [GOOD]}, "identical"),
        ({"prompt": PROMPT, "chosen": [{"role": "assistant"}], "rejected": [BAD]}, "field 'chosen[0]'"),
        (
            {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": 5}], "rejected": [BAD]},
            "field 'chosen[0].content': expected a string",
        ),
        (
            {"prompt": PROMPT, "chosen": [{"role": "user", "content": "x"}], "rejected": [BAD]},
            "last message must be from the assistant",
        ),
    ],
)
def test_bad_preference_records_name_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "preferences.jsonl", [pair(), record])
    with pytest.raises(DataError) as err:
        preference_dataset(path)
    assert f"{path}:2:" in str(err.value) and message in str(err.value)


def test_invalid_json_line_and_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(), "{not json"])
    with pytest.raises(DataError, match=r"p\.jsonl:2: invalid JSON"):
        preference_dataset(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no preference pairs"):
        preference_dataset(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="<records>: no SFT rows"):
        sft_dataset([])
    with pytest.raises(DataError, match="no such file"):
        preference_dataset(tmp_path / "missing.jsonl")


def test_run_folder_export_folder_and_split(tmp_path):
    from datasets import Dataset

    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "preferences.jsonl", [pair(i) for i in range(10)])
    splits = preference_dataset(run, eval_fraction=0.2, seed=1)
    assert len(splits.train) == 8 and len(splits.eval) == 2
    export = tmp_path / "export"
    Dataset.from_list([pair(i) for i in range(3)]).save_to_disk(str(export / "preferences"))
    assert len(preference_dataset(export).train) == 3
    with pytest.raises(DataError, match="no sft"):
        sft_dataset(export)


def test_hh_rlhf_transcript_pairs_become_conversations():
    first = json.loads(HH_RLHF.read_text().splitlines()[0])
    row = preference_dataset([first]).train[0]
    assert row["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"]
    broken = {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: bye\n\nAssistant: b"}
    with pytest.raises(DataError, match="differ before the last reply"):
        preference_dataset([broken])


def test_kto_unpairs_into_desirable_and_undesirable():
    unpaired = unpaired_dataset(preference_dataset([pair(0), pair(1)]))
    rows = unpaired.train.to_list()
    assert len(rows) == 4
    assert {r["completion"][0]["content"] for r in rows if r["label"]} == {GOOD["content"]}
    assert {r["completion"][0]["content"] for r in rows if not r["label"]} == {BAD["content"]}


def test_prompt_dataset_keeps_reference():
    rows = prompt_dataset([{"messages": [*PROMPT, GOOD]}, {"prompt": "plain text"}]).train.to_list()
    assert rows[0] == {"prompt": PROMPT, "reference": GOOD["content"]}
    assert rows[1]["prompt"] == [{"role": "user", "content": "plain text"}] and rows[1]["reference"] is None


def test_spin_pairs_are_preference_rows_without_reproduced_references(monkeypatch):
    from cai.records import preference_row
    from training import spin
    from training.recipes import SpinOptions

    answers = {"q0": BAD["content"], "q1": f" {GOOD['content']} ", "q2": " "}

    async def policy_answers(model_dir, prompts, params):
        return [answers[p[-1]["content"]] for p in prompts]

    monkeypatch.setattr(spin, "policy_answers", policy_answers)
    rows = [{"prompt": [{"role": "user", "content": q}], "reference": GOOD["content"]} for q in answers]
    pairs = spin.spin_pairs("unused", rows, SpinOptions.model_validate({}), seed=0)
    assert pairs == [preference_row(rows[0]["prompt"], GOOD["content"], BAD["content"])]
    assert pairs[0]["chosen"] == [GOOD] and pairs[0]["rejected"] == [BAD]


def test_shipped_recipes_load_and_embedded_ones_build_trl_configs(tmp_path):
    names = shipped_recipes()
    assert {"sft-embedded-cpu", "dpo-embedded-cpu", "dpo-7b-1gpu", "dpo-7b-multi-gpu", "grpo-7b-1gpu"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        if name.endswith("embedded-cpu"):
            config = recipe.trl_config(tmp_path)
            assert config.output_dir == str(tmp_path) and config.bf16 is False
    assert type(load_recipe("orpo-embedded-cpu").trl_config(tmp_path)).__module__.startswith("trl.experimental.orpo")
    assert Path(load_recipe("dpo-7b-multi-gpu").args["deepspeed"]).is_file()
    assert load_recipe("dpo-7b-1gpu").peft_config().r == 16


def test_recipe_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer: dpo\nargs:\n  beta: abc\n  learnin_rate: 1.0\npeft:\n  r: 0\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert f"{path}:3: args.beta: Input should be a valid number" in text
    assert f"{path}:4: args.learnin_rate: unknown DPOConfig field" in text and "learning_rate" in text
    assert f"{path}:6: peft.r:" in text
    path.write_text("trainer: ppo\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:1: trainer"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="not 'sft'"):
        recipe_for("dpo-embedded-cpu", "sft")
    with pytest.raises(RecipeError, match="args.beta"):
        load_recipe("dpo-embedded-cpu").with_args(beta="high")
    with pytest.raises(RecipeError, match="no shipped recipe"):
        load_recipe("nope")


def test_constitution_hash_is_read_from_the_run(tmp_path):
    from training.provenance import constitution_hash_for

    write_jsonl(tmp_path / "traces.jsonl", [{"constitution": "harmless@1#abc123"}])
    data = write_jsonl(tmp_path / "preferences.jsonl", [pair()])
    assert constitution_hash_for(data) == "abc123"
    assert constitution_hash_for(tmp_path / "nowhere" / "x.jsonl") is None


def test_cli_reports_bad_data_cleanly(tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    bad = write_jsonl(tmp_path / "preferences.jsonl", [{"prompt": PROMPT, "chosen": [GOOD], "rejected": [GOOD]}])
    result = CliRunner().invoke(
        app, ["train", "dpo", str(bad), "--out", str(tmp_path / "out"), "--model", "hf:/nowhere"]
    )
    assert result.exit_code == 2  # bad input (README: errors and exit codes)
    assert f"{bad}:1: fields 'chosen' and 'rejected' are identical" in result.output
    result = CliRunner().invoke(app, ["train", "dpo", str(bad), "--set", "betta=1"])
    assert result.exit_code == 2 and "betta" in result.output
