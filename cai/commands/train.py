"""`cai train sft|rm|dpo|kto|orpo|rl|spin DATA --out DIR` and `cai pipeline`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from cai.errors import CaiError

train_app = typer.Typer(
    help="Train with TRL on cai data (SFT, reward model, DPO family, online RL, SPIN).", no_args_is_help=True
)

DEFAULT_RECIPES = {
    "sft": "sft-embedded-cpu",
    "rm": "rm-embedded-cpu",
    "dpo": "dpo-embedded-cpu",
    "kto": "kto-embedded-cpu",
    "orpo": "orpo-embedded-cpu",
    "rl": "grpo-embedded-cpu",
    "spin": "spin-embedded-cpu",
}
HELP = {
    "sft": "SFT on revisions (sft.jsonl / run or export folder); loss on the final assistant turn.",
    "rm": "Reward model (TRL RewardTrainer) on preference pairs; use it later as an `rm:FOLDER` judge.",
    "dpo": "DPO on preference pairs (preferences.jsonl); any TRL loss type via --set loss_type=ipo.",
    "kto": "KTO: preference pairs split into desirable (chosen) / undesirable (rejected) responses.",
    "orpo": "ORPO (reference-free) on preference pairs.",
    "rl": "Online RLAIF: GRPO or RLOO (recipe's trainer) with a cai judge as the reward.",
    "spin": "SPIN-style rounds: DPO of reference responses against the policy's own answers.",
}


def _fail(message: str) -> None:
    """A bad flag or input that is not a CaiError (which the CLI boundary reports itself): exit 2."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` (value parsed as YAML) -> TRL config args."""
    from cai.yamlfile import YamlFile

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            _fail(f"--set {pair!r}: expected KEY=VALUE with KEY a field of the trainer's TRL config")
        out[key.strip()] = YamlFile.value(f"--set {key.strip()}", value)
    return out


def _run(
    kind: str,
    data: Path,
    out: Optional[Path],
    recipe: Optional[str],
    model: Optional[str],
    max_steps: Optional[int],
    sets: list[str],
    constitution: Optional[str],
    **extra: Any,
) -> None:
    from training.distributed import world
    from training.provenance import constitution_hash_for
    from training.recipes import load_recipe

    out = out or Path("runs") / f"train-{kind}"
    try:
        loaded = load_recipe(recipe or DEFAULT_RECIPES[kind], **({"model": model} if model else {}))
        args = _overrides(sets)
        if max_steps:
            args["max_steps"] = max_steps
        loaded = loaded.with_args(**args) if args else loaded
        chash = constitution_hash_for(data, constitution)
        result = _trainer(kind)(data, out, recipe=loaded, constitution_hash=chash, **extra)
    except FileNotFoundError as exc:  # cai's own errors reach the CLI boundary (exit 2 for bad input)
        _fail(str(exc))
        return
    if not world().main:  # one process reports and writes the report
        return
    state = "already complete" if result.resumed else "trained"
    loss = result.metrics.get("train_loss")
    typer.echo(
        f"{result.path}: {state}"
        + (f", train_loss {loss:.4g}" if isinstance(loss, float) else "")
        + f"; use it with --model hf:{result.path}",
        err=True,
    )
    if (Path(result.path) / "trainer_log.json").is_file():  # loss / reward curves (cai.report)
        from cai.report import write_report

        typer.echo(f"report: {write_report([result.path])}", err=True)


def _trainer(kind: str) -> Callable[..., Any]:
    import training

    trainers: dict[str, Callable[..., Any]] = {
        "sft": training.train_sft,
        "rm": training.train_reward,
        "dpo": training.train_dpo,
        "kto": training.train_kto,
        "orpo": training.train_orpo,
        "rl": training.train_rl,
        "spin": training.train_spin,
    }
    return trainers[kind]


DATA = typer.Argument(..., help="sft.jsonl / preferences.jsonl, a cai run or export folder, or a saved HF dataset.")
OUT = typer.Option(None, "--out", "-o", help="Output folder for the model (default: runs/train-KIND). Rerun to resume.")
RECIPE = typer.Option(None, "--recipe", "-r", help="Recipe YAML path or shipped name (see `cai train recipes`).")
MODEL = typer.Option(
    None, "--model", "-m", help="Base model: embedded, hf:PATH, a folder or a hub id (overrides the recipe)."
)
MAX_STEPS = typer.Option(None, "--max-steps", min=1, help="Stop after N optimizer steps.")
SETS = typer.Option([], "--set", help="Override a TRL config field: --set learning_rate=1e-5 (repeatable).")
CONSTITUTION = typer.Option(
    None, "--constitution", "-c", help="Constitution of the data, for provenance (default: read from the run)."
)


EVAL_PROMPTS = typer.Option(
    None,
    "--eval-prompts",
    help="Held-out prompts (label/category optional): log win-rate vs the reference model and refusal rates during training.",
)
EVAL_JUDGE = typer.Option(
    "rules:refusal",
    "--eval-judge",
    help="Judge for --eval-prompts: pairwise:MODEL (win-rate), a pointwise judge, or rules:refusal.",
)
EVAL_EVERY = typer.Option(50, "--eval-every", min=1, help="Evaluate every N steps (and at the last step).")
EVAL_LIMIT = typer.Option(8, "--eval-limit", min=1, help="Use the first N eval prompts (of each label).")


def _eval_callbacks(prompts: Optional[Path], judge: str, every: int, limit: int) -> dict[str, Any]:
    if prompts is None:
        return {}
    from training.callbacks import WinRateCallback

    return {"callbacks": [WinRateCallback(prompts, judge, every=every, limit=limit)]}


def _offline(kind: str) -> Callable[..., None]:
    def command(
        data: Path = DATA,
        out: Optional[Path] = OUT,
        recipe: Optional[str] = RECIPE,
        model: Optional[str] = MODEL,
        max_steps: Optional[int] = MAX_STEPS,
        set: list[str] = SETS,
        constitution: Optional[str] = CONSTITUTION,
        eval_prompts: Optional[Path] = EVAL_PROMPTS,
        eval_judge: str = EVAL_JUDGE,
        eval_every: int = EVAL_EVERY,
        eval_limit: int = EVAL_LIMIT,
    ) -> None:
        try:
            callbacks = _eval_callbacks(eval_prompts, eval_judge, eval_every, eval_limit)
        except CaiError:
            raise
        except ValueError as exc:
            _fail(str(exc))
        _run(kind, data, out, recipe, model, max_steps, set, constitution, **callbacks)

    command.__doc__ = HELP[kind]
    return command


for _kind in ("sft", "rm", "dpo", "kto", "orpo"):
    train_app.command(_kind, help=HELP[_kind])(_offline(_kind))


@train_app.command("rl", help=HELP["rl"])
def rl(
    data: Path = DATA,
    out: Optional[Path] = OUT,
    recipe: Optional[str] = RECIPE,
    model: Optional[str] = MODEL,
    max_steps: Optional[int] = MAX_STEPS,
    set: list[str] = SETS,
    constitution: Optional[str] = CONSTITUTION,
    judge: Optional[str] = typer.Option(
        None, "--judge", "-j", help="Reward judge spec (default: the recipe's), e.g. violation:embedded."
    ),
) -> None:
    _run("rl", data, out, recipe, model, max_steps, set, constitution, judge=judge)


@train_app.command("spin", help=HELP["spin"])
def spin(
    data: Path = DATA,
    out: Optional[Path] = OUT,
    recipe: Optional[str] = RECIPE,
    model: Optional[str] = MODEL,
    max_steps: Optional[int] = MAX_STEPS,
    set: list[str] = SETS,
    constitution: Optional[str] = CONSTITUTION,
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Self-play rounds (default: the recipe's)."),
) -> None:
    _run("spin", data, out, recipe, model, max_steps, set, constitution, rounds=rounds)


@train_app.command("recipes")
def recipes() -> None:
    """List the shipped recipes."""
    from training.recipes import shipped_recipes

    for name in shipped_recipes():
        typer.echo(name)


def pipeline(
    config: Optional[Path] = typer.Argument(None, help="Pipeline YAML (fields of training.PipelineConfig)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p", help="Prompt file (overrides the config)."),
    out: Path = typer.Option(Path("runs/pipeline"), "--out", "-o", help="Folder with one subfolder per stage."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model that generates (and is trained, if local)."),
    judge: Optional[str] = typer.Option(None, "--judge", "-j", help="Label pairs with this judge before DPO."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only the first N prompts."),
    revisions: Optional[int] = typer.Option(None, "--revisions", min=1),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Cap each training stage."),
    eval_prompts: Optional[str] = typer.Option(
        None,
        "--eval-prompts",
        help="Eval stage: base vs SFT vs DPO on these held-out prompts ('shipped' = cai's safety set).",
    ),
) -> None:
    """generate -> (label) -> SFT -> DPO in one call; rerun to resume at the unfinished stage."""
    from training.pipeline import PipelineConfig, load_pipeline_config, run_pipeline

    fields: dict[str, Any] = {
        "prompts": prompts,
        "model": model,
        "judge": judge,
        "limit": limit,
        "revisions": revisions,
        "max_steps": max_steps,
        "eval_prompts": eval_prompts,
    }
    try:
        if config is not None:
            cfg = load_pipeline_config(config, **fields)
        else:
            if not prompts:
                _fail("give a pipeline YAML or --prompts FILE")
            cfg = PipelineConfig(**{k: v for k, v in fields.items() if v is not None})
        folders = run_pipeline(cfg, out)
    except CaiError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    for stage, folder in folders.items():
        typer.echo(f"{stage}: {folder}", err=True)
    typer.echo(f"final model: hf:{folders['dpo']}", err=True)
    if "eval" in folders:
        typer.echo((folders["eval"] / "eval.md").read_text(encoding="utf-8"), err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.command("pipeline")(pipeline)
