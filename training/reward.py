"""Reward model on AI-labelled preference pairs (usable afterwards as an ``rm:`` judge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.core import TrainResult, fit
from training.data import preference_dataset
from training.recipes import Recipe, recipe_for


def train_reward(
    data: Any,
    out: str | Path,
    *,
    recipe: str | Path | Recipe = "rm-embedded-cpu",
    model: str | None = None,
    constitution_hash: str | None = None,
) -> TrainResult:
    """``RewardTrainer`` on ``preferences.jsonl`` (an optional ``margin`` column is used).
    The output is a sequence-classification model with one logit: the reward."""
    recipe = recipe_for(recipe, "rm", model)
    splits = preference_dataset(data, eval_fraction=recipe.eval_fraction, seed=recipe.seed)
    return fit(recipe, splits, out, constitution_hash=constitution_hash)
