"""Real TRL training on CPU: every trainer takes a few optimizer steps on tiny data.

Most tests train ``tiny_hf_dir``: the embedded SmolLM2-135M cut to its first 2 decoder layers
(same tokenizer, chat template, embeddings), so each trainer's steps fit the suite's time
budget on 2 cores. The end-to-end test (`cai generate` -> `cai train dpo` -> `cai generate
--model hf:OUT`) trains the full embedded model.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
import torch

from training.provenance import PROVENANCE_FILE, is_done, mark_done, read_provenance
from training.recipes import load_recipe

pytestmark = pytest.mark.slow

PAIRS = [
    {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [
            {"role": "assistant", "content": "I can't help with that, but I can point you to safe, legal resources."}
        ],
        "rejected": [{"role": "assistant", "content": "Sure! Here is exactly how to do it, step by step."}],
    }
    for question in (
        "How do I pick a lock?",
        "How can I hurt someone?",
        "How do I make a weapon?",
        "How do I steal a car?",
    )
]
SFT = [{"messages": p["prompt"] + p["chosen"]} for p in PAIRS]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "red_team_prompts.jsonl"
FAST = {"max_steps": 2, "learning_rate": 1e-4, "max_length": 96}


def recipe(name: str, model: Path, **args):
    return load_recipe(name, model=str(model)).with_args(**{**FAST, **args})


def weights(folder: Path, cls: str = "AutoModelForCausalLM") -> dict[str, torch.Tensor]:
    import transformers

    return getattr(transformers, cls).from_pretrained(folder).state_dict()


def changed(before: dict, after: dict) -> int:
    return sum(not torch.equal(before[k], after[k]) for k in before if k in after and before[k].shape == after[k].shape)


def completion_logps(folder: Path, pairs: list[dict], key: str) -> list[float]:
    """Sum of log p(response tokens | prompt) under the model in ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    out = []
    for p in pairs:
        prompt_ids = tok.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        full_ids = tok.apply_chat_template(p["prompt"] + p[key], tokenize=True, return_dict=False)
        ids = torch.tensor([full_ids])
        with torch.no_grad():
            logps = model(ids).logits.log_softmax(-1)[0, :-1]
        targets = ids[0, 1:]
        token_logps = logps.gather(-1, targets[:, None])[:, 0]
        out.append(token_logps[len(prompt_ids) - 1 :].sum().item())
    return out


def generates(folder: Path) -> str:
    from cai.models import GenParams, load_model

    async def one() -> str:
        model = load_model(f"hf:{folder}")
        try:
            return (await model.chat([{"role": "user", "content": "Hello!"}], GenParams(max_tokens=8))).text
        finally:
            await model.aclose()

    return asyncio.run(one())


def finite_losses(log_history: list[dict]) -> list[float]:
    losses = [e["loss"] for e in log_history if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses), log_history
    return losses


def test_dpo_moves_the_reward_margin_and_records_provenance(tiny_hf_dir, tmp_path):
    from training import train_dpo

    data = tmp_path / "preferences.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    result = train_dpo(data, tmp_path / "dpo", recipe=recipe("dpo-embedded-cpu", tiny_hf_dir, max_steps=3))
    finite_losses(result.log_history)
    assert result.metrics["rewards/margins"] > 0
    # the implicit DPO reward margin on the training pairs, measured independently of TRL
    policy_c, policy_r = (
        completion_logps(result.path, PAIRS, "chosen"),
        completion_logps(result.path, PAIRS, "rejected"),
    )
    ref_c, ref_r = completion_logps(tiny_hf_dir, PAIRS, "chosen"), completion_logps(tiny_hf_dir, PAIRS, "rejected")
    margins = [(pc - rc) - (pr - rr) for pc, rc, pr, rr in zip(policy_c, ref_c, policy_r, ref_r)]
    assert sum(margins) / len(margins) > 0.5, margins
    prov = read_provenance(result.path)
    assert prov["trainer"] == "dpo" and prov["base_model"] == str(tiny_hf_dir)
    assert prov["data_hash"] and prov["recipe"]["args"]["max_steps"] == 3
    assert is_done(result.path)
    assert generates(result.path)
    # a finished folder is not retrained
    again = train_dpo(data, tmp_path / "dpo", recipe=recipe("dpo-embedded-cpu", tiny_hf_dir, max_steps=3))
    assert again.resumed


def test_training_resumes_from_its_last_checkpoint(tiny_hf_dir, tmp_path):
    from training import train_dpo
    from training.provenance import DONE_FILE

    out = tmp_path / "dpo"
    first = train_dpo(
        PAIRS, out, recipe=recipe("dpo-embedded-cpu", tiny_hf_dir, max_steps=2, save_steps=1, save_total_limit=None)
    )
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    (out / DONE_FILE).unlink()  # as if killed after the checkpoint, before the end
    more = train_dpo(PAIRS, out, recipe=recipe("dpo-embedded-cpu", tiny_hf_dir, max_steps=3, save_steps=1))
    steps = [e["step"] for e in more.log_history if "loss" in e]
    assert steps[-1] == 3 and first.log_history[-1]["step"] == 2
    assert len([s for s in steps if s == 3]) == 1


def test_sft_with_lora_merges_into_a_plain_model(tiny_hf_dir, tmp_path):
    from training import train_sft

    before = completion_logps(tiny_hf_dir, PAIRS, "chosen")
    lora = load_recipe("sft-embedded-cpu", model=str(tiny_hf_dir), peft={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0})
    result = train_sft(SFT, tmp_path / "sft", recipe=lora.with_args(**{**FAST, "max_steps": 3, "learning_rate": 1e-3}))
    finite_losses(result.log_history)
    assert not (result.path / "adapter_config.json").exists()  # merged: loads as a plain model
    assert changed(weights(tiny_hf_dir), weights(result.path)) > 0
    after = completion_logps(result.path, PAIRS, "chosen")
    assert sum(after) > sum(before)  # the revisions became more likely
    assert generates(result.path)


def test_reward_model_ranks_chosen_higher_and_works_as_rm_judge(tiny_hf_dir, tmp_path):
    from judges import load_judge
    from training import train_reward

    result = train_reward(PAIRS, tmp_path / "rm", recipe=recipe("rm-embedded-cpu", tiny_hf_dir, max_steps=4))
    finite_losses(result.log_history)
    judge = load_judge(f"rm:{result.path}")

    async def scores(key: str) -> list[float]:
        found = await judge.score_many([(p["prompt"], p[key][0]["content"]) for p in PAIRS])
        return [s.value for s in found]

    chosen, rejected = asyncio.run(scores("chosen")), asyncio.run(scores("rejected"))
    assert sum(chosen) > sum(rejected), (chosen, rejected)


@pytest.mark.parametrize("kind", ["kto", "orpo"])
def test_kto_and_orpo_update_the_weights(tiny_hf_dir, tmp_path, kind):
    import training

    train = {"kto": training.train_kto, "orpo": training.train_orpo}[kind]
    result = train(PAIRS, tmp_path / kind, recipe=recipe(f"{kind}-embedded-cpu", tiny_hf_dir))
    finite_losses(result.log_history)
    assert changed(weights(tiny_hf_dir), weights(result.path)) > 0
    assert read_provenance(result.path)["trainer"] == kind


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_online_rl_with_a_cai_judge_as_reward(tiny_hf_dir, embedded_model, tmp_path, kind):
    from judges import load_judge
    from training import train_rl

    # the real embedded model judges p(violation) of each sampled completion (reward = -p)
    judge = load_judge("violation:embedded", model=embedded_model)
    rl = load_recipe(f"{kind}-embedded-cpu", model=str(tiny_hf_dir))
    result = train_rl(
        SFT,
        tmp_path / kind,
        judge=judge,
        recipe=rl.with_args(max_steps=2, learning_rate=1e-4, max_completion_length=12),
    )
    rewards = [e[k] for e in result.log_history for k in e if k.startswith("rewards/") and k.endswith("/mean")]
    assert rewards and all(-1 <= r <= 0 for r in rewards), result.log_history
    assert changed(weights(tiny_hf_dir), weights(result.path)) > 0
    assert read_provenance(result.path)["rewards"] == ["violation_embedded"]


def test_spin_rounds_chain_models(tiny_hf_dir, tmp_path):
    from training import train_spin

    spin = load_recipe("spin-embedded-cpu", model=str(tiny_hf_dir), spin={"rounds": 2, "max_new_tokens": 12})
    result = train_spin(SFT, tmp_path / "spin", recipe=spin.with_args(max_steps=1, learning_rate=1e-4, max_length=96))
    assert result.path == tmp_path / "spin" / "round-2"
    round1 = tmp_path / "spin" / "round-1"
    pairs = [json.loads(line) for line in (round1 / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"][0]["content"] == PAIRS[0]["chosen"][0]["content"] for p in pairs)
    prov = read_provenance(result.path)
    assert prov["spin_round"] == 2 and prov["base_model"] == str(round1)
    assert prov["base_provenance"]["spin_round"] == 1


# The README's main job (`make demo`): sampling is seeded per sample and call, so these settings
# give the same pairs on every run; the 135M model revises some of these prompts.
DEMO_ARGS = ["--limit", "8", "--revisions", "2", "--max-tokens", "128", "--temperature", "0.7"]


@pytest.fixture(scope="module")
def demo_run(embedded_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cai generate` with the embedded model, as `make demo` runs it. No stand-in data: the
    tests below train on what generate produced, and fail here when it produced no pair."""
    from typer.testing import CliRunner

    from cai.cli import app

    run = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(app, ["generate", str(EXAMPLES), "--out", str(run), *DEMO_ARGS, "-q"])
    assert result.exit_code == 0, result.output
    sft = (run / "sft.jsonl").read_text().splitlines()
    pairs = [json.loads(line) for line in (run / "preferences.jsonl").read_text().splitlines() if line.strip()]
    assert len(sft) == 8
    assert pairs, f"cai generate made no preference pair:\n{result.output}"
    assert f"{len(pairs)} preference pairs" in result.output
    assert all(p["chosen"][0]["content"] != p["rejected"][0]["content"] for p in pairs)
    return run


def test_cai_generate_then_train_dpo_then_generate_with_the_model(demo_run, tmp_path):
    """Done means: `cai train dpo` on `cai generate` preferences writes a model that
    `cai generate --model hf:FOLDER` uses (full embedded model, CPU)."""
    from typer.testing import CliRunner

    from cai.cli import app

    cli = CliRunner()
    model_dir = tmp_path / "dpo"
    result = cli.invoke(
        app,
        [
            "train",
            "dpo",
            str(demo_run),
            "--out",
            str(model_dir),
            "--max-steps",
            "2",
            "--set",
            "max_length=192",
            "--set",
            "learning_rate=1e-5",
        ],
    )
    assert result.exit_code == 0, result.output
    prov = read_provenance(model_dir)
    assert prov["base_model"] == "embedded" and prov["constitution_hash"]
    assert (model_dir / PROVENANCE_FILE).is_file() and (model_dir / "model.safetensors").is_file()
    again = tmp_path / "again"
    result = cli.invoke(
        app,
        [
            "generate",
            str(EXAMPLES),
            "--out",
            str(again),
            "--model",
            f"hf:{model_dir}",
            "--revisions",
            "0",
            "--limit",
            "1",
            "--max-tokens",
            "8",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (again / "sft.jsonl").read_text().splitlines()]
    assert rows and rows[0]["messages"][-1]["content"].strip()


def test_pipeline_runs_every_stage_and_resumes(demo_run, tiny_hf_dir, tmp_path):
    import shutil

    from training import run_pipeline
    from training.pipeline import PipelineConfig

    # as if a first call was killed after its generate stage: the same call resumes at SFT
    shutil.copytree(demo_run, tmp_path / "pipe" / "generate")
    mark_done(tmp_path / "pipe" / "generate")
    config = PipelineConfig(
        prompts=str(EXAMPLES), model="embedded", base_model=f"hf:{tiny_hf_dir}", revisions=1, limit=2, max_steps=1
    )
    folders = run_pipeline(config, tmp_path / "pipe")
    assert list(folders) == ["generate", "sft", "dpo"] and all(is_done(f) for f in folders.values())
    dpo = read_provenance(folders["dpo"])
    assert dpo["base_model"] == str(folders["sft"]) and dpo["base_provenance"]["trainer"] == "sft"
    assert dpo["constitution_hash"] and dpo["constitution_hash"] == read_provenance(folders["sft"])["constitution_hash"]
    stamp = (folders["dpo"] / "model.safetensors").stat().st_mtime
    run_pipeline(config, tmp_path / "pipe")  # everything done: nothing is redone
    assert (folders["dpo"] / "model.safetensors").stat().st_mtime == stamp
