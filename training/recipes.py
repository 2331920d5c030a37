"""Training recipes: YAML files that map one-to-one onto TRL configs.

A recipe names the trainer, the base model, optional LoRA options, and ``args``: exactly the
fields of that trainer's TRL config (``DPOConfig`` for ``dpo``, ...). ``args`` is validated
by a pydantic model generated from the TRL dataclass itself, so every TRL field is accepted
with its own type and nothing else is. Errors name the file, line and field::

    recipe.yaml:7: args.beta: Input should be a valid number

    trainer: dpo
    model: embedded            # "embedded", "hf:PATH", a local HF folder or a hub id
    peft: {r: 16, lora_alpha: 32}
    args: {beta: 0.1, loss_type: [sigmoid], learning_rate: 5.0e-7}
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from cai.errors import Problem
from cai.errors import RecipeError as RecipeError  # its home was here
from cai.yamlfile import YamlFile

TrainerKind = Literal["sft", "rm", "dpo", "kto", "orpo", "grpo", "rloo", "spin"]

# trainer kind -> (module, config class, trainer class)
TRL_CLASSES: dict[str, tuple[str, str, str]] = {
    "sft": ("trl", "SFTConfig", "SFTTrainer"),
    "rm": ("trl", "RewardConfig", "RewardTrainer"),
    "dpo": ("trl", "DPOConfig", "DPOTrainer"),
    "kto": ("trl", "KTOConfig", "KTOTrainer"),
    "orpo": ("trl.experimental.orpo", "ORPOConfig", "ORPOTrainer"),
    "grpo": ("trl", "GRPOConfig", "GRPOTrainer"),
    "rloo": ("trl", "RLOOConfig", "RLOOTrainer"),
    "spin": ("trl", "DPOConfig", "DPOTrainer"),  # each SPIN round is a DPO run
}

SHIPPED_DIR = Path(__file__).parent / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraOptions(_Strict):
    """PEFT LoRA options (``peft.LoraConfig`` fields); ``merge`` folds the adapter into the
    saved weights so the output folder loads as a plain model (``hf:FOLDER``)."""

    r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    merge: bool = True


class RLOptions(_Strict):
    """Online RL: the judge whose score is the reward (a ``judges.load_judge`` spec), the
    options of its model (``load_model``: base_url, api_key, ...) and of the judge class."""

    judge: str = "violation:embedded"
    model_options: dict[str, Any] = {}
    judge_options: dict[str, Any] = {}
    centered: bool = False  # pairwise judges: reward 2p-1 instead of p


class SpinOptions(_Strict):
    rounds: int = Field(2, gt=0)
    # generation of the policy's own (rejected) responses each round
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.7, ge=0)


class Recipe(_Strict):
    trainer: TrainerKind
    model: str = "embedded"
    eval_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    peft: LoraOptions | None = None
    rl: RLOptions | None = None
    spin: SpinOptions | None = None
    args: dict[str, Any] = {}
    source: str = Field("<python>", exclude=True)  # where it was loaded from, for messages

    def trl_config(self, output_dir: str | Path, **overrides: Any) -> Any:
        """Build the TRL config object, with device-aware defaults where the recipe is silent."""
        args = {**device_defaults(self.args), **self.args, **overrides, "output_dir": str(output_dir)}
        args = validate_args(self.trainer, args, self.source)
        check_deepspeed(args.get("deepspeed"), self.source)
        config_cls = trl_class(self.trainer, config=True)
        try:
            return config_cls(**args)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"{self.source}: args: {exc}") from exc

    def peft_config(self) -> Any:
        if self.peft is None:
            return None
        from peft import LoraConfig

        task = "SEQ_CLS" if self.trainer == "rm" else "CAUSAL_LM"
        options = self.peft.model_dump(exclude={"merge"})
        return LoraConfig(task_type=task, **options)

    def with_args(self, changed_by: str = "--set", **changes: Any) -> Recipe:
        """A copy with some TRL args changed (CLI flags override recipe values); errors in
        ``changes`` name ``changed_by`` (the flag), not the recipe file."""
        validate_args(self.trainer, changes, changed_by)
        return self.model_copy(update={"args": validate_args(self.trainer, {**self.args, **changes}, self.source)})


def device_defaults(args: dict[str, Any]) -> dict[str, Any]:
    """Defaults that depend on the machine: TRL turns bf16 on by default, which a CPU run
    should not inherit; runs report nowhere unless asked."""
    import torch

    defaults: dict[str, Any] = {"report_to": "none"}
    if not torch.cuda.is_available():
        defaults.update(bf16=False, use_cpu=True)
    return {k: v for k, v in defaults.items() if k not in args}


def check_deepspeed(config: Any, source: str) -> None:
    """A recipe that trains with DeepSpeed needs the ``deepspeed`` package and CUDA GPUs on this
    host: say so up front instead of an ImportError from inside transformers."""
    if not config:
        return
    import importlib.util

    import torch

    where = f"{source}: args.deepspeed"
    if importlib.util.find_spec("deepspeed") is None:
        raise RecipeError(
            f"{where}: this recipe trains with DeepSpeed ({config}) but the deepspeed package is not "
            "installed; install it on the GPU host (pip install deepspeed) or pick a recipe without `deepspeed`"
        )
    if not torch.cuda.is_available():
        raise RecipeError(
            f"{where}: DeepSpeed ZeRO trains on CUDA GPUs and none is visible here; on CPU use a "
            "recipe without `deepspeed` (several CPU processes: accelerate launch --multi_gpu)"
        )


def trl_class(trainer: str, *, config: bool) -> type:
    module, config_name, trainer_name = TRL_CLASSES[trainer]
    if module.startswith("trl.experimental"):
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return getattr(importlib.import_module(module), config_name if config else trainer_name)


@functools.cache
def args_model(trainer: str) -> type[BaseModel]:
    """A pydantic model with exactly the fields (names, types, defaults) of the TRL config."""
    config_cls = trl_class(trainer, config=True)
    hints = typing.get_type_hints(config_cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = None  # output_dir: filled in by the trainer functions
        fields[f.name] = (hints.get(f.name, Any) | None if default is None else hints.get(f.name, Any), default)
    return create_model(
        f"{config_cls.__name__}Args",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def validate_args(
    trainer: str, args: dict[str, Any], source: str = "<python>", yaml_file: YamlFile | None = None
) -> dict[str, Any]:
    """Check ``args`` against the TRL config's fields and types; returns them coerced to those
    types (e.g. ``"1e-5"``, which YAML reads as a string, becomes a float)."""
    model = args_model(trainer)
    try:
        return model.model_validate(args).model_dump(include=set(args))
    except ValidationError as exc:
        if yaml_file is None:
            raise RecipeError(
                "\n".join(f"{source}: args.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            ) from None
        # report against the `args` node, so lines point into the file
        view = copy.copy(yaml_file)
        root = yaml_file.root
        entries = root.value if root is not None and isinstance(root.value, list) else []
        view.root = next((v for k, v in entries if k.value == "args"), root)
        problems = [
            Problem(
                p.file,
                p.line,
                f"args.{p.field}",
                p.message.replace("unknown field", f"unknown {TRL_CLASSES[trainer][1]} field"),
            )
            for p in view.validation_problems(exc, model)
        ]
        raise RecipeError(problems) from None


def load_recipe(name_or_path: str | Path | Recipe, **overrides: Any) -> Recipe:
    """Load a recipe file, or a shipped one by name (e.g. ``dpo-embedded-cpu``).
    ``overrides`` replace top-level fields (``model=...``)."""
    if isinstance(name_or_path, Recipe):
        return name_or_path.model_copy(update=overrides) if overrides else name_or_path
    path = Path(name_or_path)
    if not path.exists():
        shipped = SHIPPED_DIR / f"{name_or_path}.yaml"
        if not shipped.exists():
            raise RecipeError(
                f"no recipe file {str(name_or_path)!r} and no shipped recipe of that name; shipped: {', '.join(shipped_recipes())}"
            )
        path = shipped
    source = str(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{source}: cannot read recipe: {exc.strerror}") from None
    yaml_file = YamlFile(source, text, error=RecipeError, expect="a recipe mapping")
    data = {**yaml_file.data, **overrides, "source": source}
    args = data.get("args")
    deepspeed = args.get("deepspeed") if isinstance(args, dict) else None
    problems: list[Problem] = []
    if isinstance(deepspeed, str) and (path.parent / deepspeed).is_file():  # relative to the recipe
        data["args"] = {**data["args"], "deepspeed": str((path.parent / deepspeed).resolve())}
    elif isinstance(deepspeed, str) and not Path(deepspeed).is_file():
        problems.append(
            yaml_file.problem(
                ("args", "deepspeed"), f"no DeepSpeed config file {deepspeed!r} (next to the recipe or from here)"
            )
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems += yaml_file.validation_problems(exc, Recipe)
    if data.get("trainer") in TRL_CLASSES and isinstance(data.get("args", {}), dict):
        try:
            validate_args(data["trainer"], data.get("args", {}), source, yaml_file)
        except RecipeError as exc:
            problems += exc.problems
    if problems:
        raise RecipeError(sorted(problems, key=lambda p: p.line or 0))
    return recipe


def recipe_for(recipe: str | Path | Recipe, trainer: str, model: str | None = None) -> Recipe:
    """Load a recipe, check that it is for ``trainer``, and apply a model override."""
    loaded = load_recipe(recipe, **({"model": model} if model else {}))
    if loaded.trainer != trainer:
        raise RecipeError(f"{loaded.source}: trainer: this recipe is for '{loaded.trainer}', not '{trainer}'")
    return loaded


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))
