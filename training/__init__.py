"""TRL glue: data adapters, recipes (YAML -> TRL configs), SFT, reward model, DPO family,
online RL with cai judges as rewards, SPIN rounds, and the generate -> SFT -> DPO pipeline.

    from training import train_dpo
    result = train_dpo("runs/demo/preferences.jsonl", "runs/dpo", recipe="dpo-embedded-cpu")
    # result.path is a plain HF folder: cai.models.load_model(f"hf:{result.path}")

The public names are ``__all__`` (pinned by tests/test_exported_members.py), loaded on first
use: ``import training`` imports neither TRL nor torch.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ loads them
    from training.core import TrainResult as TrainResult
    from training.data import DataError as DataError
    from training.pipeline import PipelineConfig as PipelineConfig
    from training.pipeline import run_pipeline as run_pipeline
    from training.preference import train_dpo as train_dpo
    from training.preference import train_kto as train_kto
    from training.preference import train_orpo as train_orpo
    from training.provenance import read_provenance as read_provenance
    from training.recipes import Recipe as Recipe
    from training.recipes import RecipeError as RecipeError
    from training.recipes import load_recipe as load_recipe
    from training.reward import train_reward as train_reward
    from training.rl import train_rl as train_rl
    from training.sft import train_sft as train_sft
    from training.spin import train_spin as train_spin

_LAZY = {
    "DataError": "training.data",
    "PipelineConfig": "training.pipeline",
    "Recipe": "training.recipes",
    "RecipeError": "training.recipes",
    "TrainResult": "training.core",
    "load_recipe": "training.recipes",
    "read_provenance": "training.provenance",
    "run_pipeline": "training.pipeline",
    "train_dpo": "training.preference",
    "train_kto": "training.preference",
    "train_orpo": "training.preference",
    "train_reward": "training.reward",
    "train_rl": "training.rl",
    "train_sft": "training.sft",
    "train_spin": "training.spin",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
