"""Training across processes: `accelerate launch --multi_gpu --num_processes 2 -m cai.cli train`
runs real DDP on CPU (gloo) on ``tiny_hf_dir``; the ZeRO-3 recipe's configs are checked with
accelerate's and transformers' own validation (deepspeed itself is not installed here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from tests.test_training import PAIRS, SFT, changed, finite_losses, weights
from training.distributed import LaunchError, World, world
from training.provenance import DONE_FILE, read_provenance
from training.recipes import SHIPPED_DIR, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-steps", "2", "--set", "max_length=96", "--set", "per_device_train_batch_size=1"]

# `cai` with write_provenance / mark_done recording which rank called them
SPY = textwrap.dedent(
    """
    import os, sys
    import training.core as core

    def spy(name, real):
        def call(*args, **kwargs):
            with open(os.environ["CAI_TEST_WRITERS"], "a") as f:
                f.write(f"{name} {os.environ.get('RANK', '-')}\\n")
            return real(*args, **kwargs)
        return call

    core.write_provenance = spy("provenance", core.write_provenance)
    core.mark_done = spy("done", core.mark_done)
    from cai.cli import app
    sys.argv[0] = "cai"
    app()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str, script: list[str] | None = None, flags: tuple[str, ...] = ("--multi_gpu",), env=None):
    """`accelerate launch FLAGS --num_processes 2 -m cai.cli ARGS` (or a script instead of -m cai.cli)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), *(script or ["-m", "cai.cli"]), *args]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=900)


def log_of(folder: Path) -> list[dict]:
    return json.loads((folder / "trainer_log.json").read_text())


@pytest.mark.slow
def test_ddp_dpo_on_two_cpu_processes_writes_once_and_resumes(tiny_hf_dir, tmp_path):
    data = tmp_path / "preferences.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "dpo"
    spy = tmp_path / "cai_spy.py"
    spy.write_text(SPY)
    writers = tmp_path / "writers.txt"
    common = ["train", "dpo", str(data), "--out", str(out), "--model", str(tiny_hf_dir), *FAST]
    run = launch(*common, "--set", "save_steps=1", script=[str(spy)], env={"CAI_TEST_WRITERS": str(writers)})
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stderr.count(f"{out}: trained") == 1 and run.stderr.count("report:") == 1, run.stderr[-2000:]
    assert sorted(writers.read_text().split("\n")[:-1]) == ["done 0", "provenance 0"]  # rank 0, once each

    log = log_of(out)
    finite_losses(log)
    assert [e["step"] for e in log if "loss" in e] == [1, 2]
    # 4 pairs, 1 per process per step: two processes see all of them in 2 steps (one would see half)
    assert log[-1]["epoch"] == 1.0
    prov = read_provenance(out)
    assert prov["distributed"] == {
        "world_size": 2,
        "distributed_type": "MULTI_CPU",
        "backend": "gloo",
        "global_batch_size": 2,
    }
    assert prov["trainer"] == "dpo" and prov["base_model"] == str(tiny_hf_dir)
    assert changed(weights(tiny_hf_dir), weights(out)) > 0

    stamp = (out / "model.safetensors").stat().st_mtime
    again = launch(*common)  # finished: every process returns at once, nothing is rewritten
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count(f"{out}: already complete") == 1
    assert (out / "model.safetensors").stat().st_mtime == stamp

    # as if killed after the last checkpoint: the rerun resumes from checkpoint-2 at step 3 (the
    # marker put into that checkpoint's state shows the history came from it, not from a restart)
    (out / DONE_FILE).unlink()
    state_file = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["resumed_marker"] = 1
    state_file.write_text(json.dumps(state))
    more = launch(*common, "--max-steps", "3", "--set", "save_steps=1")
    assert more.returncode == 0, more.stderr[-4000:]
    resumed = log_of(out)
    assert [e["step"] for e in resumed if "loss" in e] == [1, 2, 3]
    assert resumed[0].get("resumed_marker") == 1
    assert read_provenance(out)["recipe"]["args"]["max_steps"] == 3


@pytest.mark.slow
def test_ddp_sft_on_two_cpu_processes(tiny_hf_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SFT))
    out = tmp_path / "sft"
    run = launch("train", "sft", str(data), "--out", str(out), "--model", str(tiny_hf_dir), *FAST)
    assert run.returncode == 0, run.stderr[-4000:]
    finite_losses(log_of(out))
    assert read_provenance(out)["distributed"]["world_size"] == 2
    assert changed(weights(tiny_hf_dir), weights(out)) > 0


@pytest.mark.slow
def test_accelerate_cpu_flag_that_starts_one_process_is_refused(tiny_hf_dir, tmp_path):
    data = tmp_path / "preferences.jsonl"
    data.write_text(json.dumps(PAIRS[0]) + "\n")
    out = tmp_path / "dpo"
    run = launch("train", "dpo", str(data), "--out", str(out), "--model", str(tiny_hf_dir), *FAST, flags=("--cpu",))
    assert run.returncode != 0
    assert "error: accelerate launch asked for several processes but started one" in run.stderr
    assert "accelerate launch --multi_gpu --num_processes N -m cai.cli train" in run.stderr
    assert not out.exists()


def test_world_comes_from_the_launchers_environment():
    assert world({}) == World()
    assert world({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(rank=1, local_rank=1, size=2)
    assert not world({"RANK": "1", "WORLD_SIZE": "2"}).main
    assert world({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}).size == 4  # mpirun (accelerate --cpu)
    single = {"MASTER_ADDR": "127.0.0.1", "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True"}
    with pytest.raises(LaunchError, match="started one"):
        world(single)
    with pytest.raises(LaunchError, match="rank 2 is outside"):
        world({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="WORLD_SIZE='two'"):
        world({"WORLD_SIZE": "two"})


def test_spin_and_pipeline_refuse_several_processes(monkeypatch, tmp_path):
    from training import run_pipeline, train_spin

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(LaunchError, match="SPIN .* runs in one process"):
        train_spin(SFT, tmp_path / "spin")
    with pytest.raises(LaunchError, match="cai pipeline runs in one process"):
        run_pipeline(prompts="p.jsonl", out=tmp_path / "pipe")
    assert not (tmp_path / "spin").exists()


def test_zero3_recipe_and_accelerate_config_validate(tmp_path):
    """The DeepSpeed JSON goes through transformers' own "auto" filling and mismatch checks
    (as ``TrainingArguments`` and the trainer run them) against the recipe's args; the
    accelerate config through accelerate's loader and launch validation."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    recipe = load_recipe("dpo-7b-multi-gpu")
    ds_file = Path(recipe.args["deepspeed"])
    assert ds_file.parent == SHIPPED_DIR
    # HfTrainerDeepSpeedConfig's checks, on accelerate's config class (no deepspeed import)
    checker = type("Check", (HfDeepSpeedConfig,), {})
    for name in ("is_auto", "fill_match", "fill_only", "trainer_config_process", "trainer_config_finalize"):
        setattr(checker, name, HfTrainerDeepSpeedConfig.__dict__[name])
    ds = checker(str(ds_file))
    ds._dtype, ds.mismatches = None, []
    args = recipe.model_copy(update={"args": {k: v for k, v in recipe.args.items() if k != "deepspeed"}})
    config = args.trl_config(tmp_path / "ckpt")
    ds.trainer_config_process(config)
    qwen_7b = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=3584))
    ds.trainer_config_finalize(config, qwen_7b, num_training_steps=1000)  # raises on "auto" left or mismatch
    assert ds.is_zero3() and ds.config["bf16"]["enabled"] is True
    assert ds.config["train_micro_batch_size_per_gpu"] == 2 and ds.config["gradient_accumulation_steps"] == 4

    accel = SHIPPED_DIR / "accelerate_zero3.json"
    cluster = load_config_from_file(str(accel))
    assert cluster.distributed_type == "DEEPSPEED" and cluster.deepspeed_config["zero_stage"] == 3
    parsed = launch_command_parser().parse_args(
        ["--config_file", str(accel), "--num_processes", "2", "-m", "cai.cli", "train", "dpo", "DATA"]
    )
    launch_args, _, _ = _validate_launch_command(parsed)
    assert launch_args.use_deepspeed and launch_args.zero_stage == 3 and launch_args.num_processes == 2
    assert launch_args.mixed_precision == "bf16" and launch_args.module

    # here (no deepspeed, no CUDA) building the trainer's config stops with a plain message
    with pytest.raises(RecipeError, match=r"dpo-7b-multi-gpu.yaml: args.deepspeed: .*(deepspeed package|CUDA)"):
        recipe.trl_config(tmp_path / "ckpt")


def test_missing_deepspeed_file_names_the_recipe_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("trainer: dpo\nargs:\n  beta: 0.1\n  deepspeed: nowhere.json\n")
    with pytest.raises(RecipeError, match=r"r.yaml:4: args.deepspeed: no DeepSpeed config file 'nowhere.json'"):
        load_recipe(path)
