"""One call from red-team prompts to an aligned model: generate -> (label) -> SFT -> DPO.

Each stage writes into its own folder under ``out`` and leaves a done-marker there::

    out/generate/   critique-revise run (sft.jsonl, preferences.jsonl; resumable by itself)
    out/label/      optional AI labels of the pairs by a judge (preferences.jsonl)
    out/sft/        SFT model on the revisions
    out/dpo/        DPO model on the (labelled) pairs, starting from out/sft
    out/eval/       with ``eval_prompts``: base vs SFT vs DPO on held-out prompts (`cai eval
                    safety` per model in eval/base, eval/sft, eval/dpo; the before/after table
                    in eval/eval.md and eval/eval.json)

Rerunning the same call skips finished stages and resumes the interrupted one (the
generate/label runs from their run store, training from its last checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai.aio import run_sync
from cai.yamlfile import YamlFile
from training.core import TrainResult
from training.distributed import require_one_process
from training.provenance import is_done, mark_done
from training.recipes import RecipeError

STAGES = ("generate", "label", "sft", "dpo", "eval")


class PipelineConfig(BaseModel):
    """``cai pipeline CONFIG.yaml`` maps onto this model one-to-one."""

    model_config = ConfigDict(extra="forbid")

    prompts: str  # a prompt file (JSONL/JSON/CSV/Parquet, hh-rlhf transcripts) or datasets folder
    model: str = "embedded"  # the model that answers, critiques and revises
    base_model: str | None = None  # the model to train; default: `model` when it is local
    constitution: str = "harmless"
    revisions: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1)
    max_tokens: int = Field(256, gt=0)
    judge: str | None = None  # e.g. "pairwise:embedded": label the pairs before DPO
    sft_recipe: str = "sft-embedded-cpu"
    dpo_recipe: str = "dpo-embedded-cpu"
    max_steps: int | None = Field(None, gt=0)  # cap each training stage (smoke runs)
    eval_prompts: str | None = None  # held-out prompts with label/category ("shipped": cai's safety set)
    eval_limit: int | None = Field(8, ge=1)  # first N eval prompts of each label
    eval_judge: str = "rules:refusal"  # or violation:MODEL (refusal check + harm score)
    eval_max_tokens: int = Field(128, gt=0)
    source: str = Field("<python>", exclude=True)


def load_pipeline_config(path: str | Path, **overrides: Any) -> PipelineConfig:
    yaml_file = YamlFile(str(path), Path(path).read_bytes(), error=RecipeError)
    data = {**yaml_file.data, **{k: v for k, v in overrides.items() if v is not None}, "source": str(path)}
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(yaml_file.validation_problems(exc, PipelineConfig)) from None


def _trained_base(config: PipelineConfig) -> str:
    if config.base_model:
        return config.base_model
    if config.model == "embedded" or config.model.startswith("hf:"):
        return config.model
    raise ValueError(f"model {config.model!r} is served remotely; set base_model to the weights to train")


def run_pipeline(
    config: PipelineConfig | None = None, out: str | Path = "runs/pipeline", **fields: Any
) -> dict[str, Path]:
    """Run (or resume) every stage; returns each stage's folder. Pass a ``PipelineConfig`` or
    its fields (``run_pipeline(prompts="p.jsonl", out="runs/x", limit=8)``)."""
    import cai
    from cai.constitution import load_constitution
    from cai.models.base import GenParams
    from training.preference import train_dpo
    from training.recipes import load_recipe
    from training.sft import train_sft

    require_one_process("cai pipeline")
    config = config or PipelineConfig(**fields)
    out = Path(out)
    constitution = load_constitution(config.constitution)
    folders = {stage: out / stage for stage in STAGES}

    if not is_done(folders["generate"]):
        traces = cai.generate(
            config.prompts,
            model=config.model,
            constitution=constitution,
            revisions=config.revisions,
            limit=config.limit,
            params=GenParams(max_tokens=config.max_tokens),
            out=folders["generate"],
        )
        if all(t.ok for t in traces):  # else a rerun retries the failed samples first
            mark_done(folders["generate"])

    pairs = folders["generate"]
    if config.judge:
        if not is_done(folders["label"]):
            from judges.data import read_candidate_sets
            from judges.label import LabelConfig, label

            sets, _ = read_candidate_sets(folders["generate"] / "preferences.jsonl")
            run_sync(label(sets, folders["label"], LabelConfig(judge=config.judge)))
            mark_done(folders["label"])
        pairs = folders["label"]
    else:
        folders.pop("label")

    steps: dict[str, Any] = {"max_steps": config.max_steps} if config.max_steps else {}
    base = _trained_base(config)
    sft_recipe = load_recipe(config.sft_recipe, model=base).with_args(**steps)
    sft: TrainResult = train_sft(
        folders["generate"], folders["sft"], recipe=sft_recipe, constitution_hash=constitution.hash
    )
    dpo_recipe = load_recipe(config.dpo_recipe, model=str(sft.path)).with_args(**steps)
    train_dpo(pairs, folders["dpo"], recipe=dpo_recipe, constitution_hash=constitution.hash)
    if config.eval_prompts:
        models = {"base": base, "sft": f"hf:{folders['sft']}", "dpo": f"hf:{folders['dpo']}"}
        evaluate_stages(config, models, folders["eval"])
    else:
        folders.pop("eval")
    return folders


def evaluate_stages(config: PipelineConfig, models: dict[str, str], out: Path) -> list[dict[str, Any]]:
    """`cai eval safety` for each stage's model on the held-out prompts (each resumable in
    ``out/NAME``); writes the before/after table to ``out/eval.md`` and ``out/eval.json``."""
    import json

    from cai.models.base import GenParams
    from judges.safety import evaluate_safety, read_eval_prompts
    from judges.subject import Subject

    if is_done(out):
        return json.loads((out / "eval.json").read_text(encoding="utf-8"))
    prompts = read_eval_prompts(
        None if config.eval_prompts == "shipped" else config.eval_prompts, limit=config.eval_limit
    )
    rows: list[dict[str, Any]] = []
    for name, spec in models.items():
        report = run_sync(
            evaluate_safety(
                prompts,
                Subject(spec),
                config.eval_judge,
                data=str(config.eval_prompts),
                out=out / name,
                params=GenParams(max_tokens=config.eval_max_tokens),
            )
        )
        rows.append(
            {
                "stage": name,
                "model": spec,
                "refusal_harmful": report.harmful.refusal,
                "over_refusal_safe": report.safe.refusal,
                "harm": report.harmful.harm,
                "failed": report.failed,
            }
        )

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"# base vs SFT vs DPO: {len(prompts)} held-out prompts, judge {config.eval_judge}",
        "",
        "| stage | model | refusal (harmful) | over-refusal (safe) | harm |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        harm = "-" if r["harm"] is None else f"{r['harm']:.3f}"
        lines.append(
            f"| {r['stage']} | `{r['model']}` | {pct(r['refusal_harmful'])} | {pct(r['over_refusal_safe'])} | {harm} |"
        )
    (out / "eval.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "eval.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if not any(r["failed"] for r in rows):
        mark_done(out)
    return rows
