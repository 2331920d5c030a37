"""TRL glue: data adapters, recipes (YAML -> TRL configs), SFT, reward model, DPO family,
online RL with cai judges as rewards, SPIN rounds, and the generate -> SFT -> DPO pipeline.

    from training import train_dpo
    result = train_dpo("runs/demo/preferences.jsonl", "runs/dpo", recipe="dpo-embedded-cpu")
    # result.path is a plain HF folder: cai.models.load_model(f"hf:{result.path}")
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "train_sft": "training.sft",
    "train_reward": "training.reward",
    "train_dpo": "training.preference",
    "train_kto": "training.preference",
    "train_orpo": "training.preference",
    "train_rl": "training.rl",
    "train_spin": "training.spin",
    "run_pipeline": "training.pipeline",
    "PipelineConfig": "training.pipeline",
    "load_recipe": "training.recipes",
    "Recipe": "training.recipes",
    "RecipeError": "training.recipes",
    "DataError": "training.data",
    "TrainResult": "training.core",
    "read_provenance": "training.provenance",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
