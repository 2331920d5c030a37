"""The DPO family on preference pairs: DPO (any TRL loss type), KTO, ORPO."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.core import TrainResult, fit
from training.data import preference_dataset, unpaired_dataset
from training.recipes import Recipe, recipe_for


def train_dpo(
    data: Any,
    out: str | Path,
    *,
    recipe: str | Path | Recipe = "dpo-embedded-cpu",
    model: str | None = None,
    loss_type: str | list[str] | None = None,
    constitution_hash: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """``DPOTrainer`` on ``preferences.jsonl``. ``loss_type`` (sigmoid, ipo, hinge, robust,
    ...; a list combines them with the recipe's ``loss_weights``) overrides the recipe."""
    recipe = recipe_for(recipe, "dpo", model)
    if loss_type is not None:
        recipe = recipe.with_args(loss_type=[loss_type] if isinstance(loss_type, str) else list(loss_type))
    splits = preference_dataset(data, eval_fraction=recipe.eval_fraction, seed=recipe.seed)
    return fit(recipe, splits, out, constitution_hash=constitution_hash, callbacks=callbacks)


def train_kto(
    data: Any,
    out: str | Path,
    *,
    recipe: str | Path | Recipe = "kto-embedded-cpu",
    model: str | None = None,
    constitution_hash: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """``KTOTrainer``: the pairs are split into desirable (chosen) and undesirable (rejected)
    single responses, so KTO also takes unpaired data built the same way."""
    recipe = recipe_for(recipe, "kto", model)
    pairs = preference_dataset(data, eval_fraction=recipe.eval_fraction, seed=recipe.seed)
    return fit(recipe, unpaired_dataset(pairs), out, constitution_hash=constitution_hash, callbacks=callbacks)


def train_orpo(
    data: Any,
    out: str | Path,
    *,
    recipe: str | Path | Recipe = "orpo-embedded-cpu",
    model: str | None = None,
    constitution_hash: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """ORPO (``trl.experimental.orpo``): reference-free, SFT and preference in one loss."""
    recipe = recipe_for(recipe, "orpo", model)
    splits = preference_dataset(data, eval_fraction=recipe.eval_fraction, seed=recipe.seed)
    return fit(recipe, splits, out, constitution_hash=constitution_hash, callbacks=callbacks)
