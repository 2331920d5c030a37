"""Supervised fine-tuning on critique-revised responses (SL-CAI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.core import TrainResult, fit
from training.data import sft_dataset
from training.recipes import Recipe, recipe_for


def train_sft(
    data: Any,
    out: str | Path,
    *,
    recipe: str | Path | Recipe = "sft-embedded-cpu",
    model: str | None = None,
    constitution_hash: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """SFT on ``sft.jsonl`` records (``{"messages": [...]}``).

    The loss covers the final assistant turn only: each conversation is split into a
    conversational prompt/completion pair, which TRL trains completion-only with any chat
    template. With ``assistant_only_loss: true`` in the recipe the conversation stays whole
    and TRL masks every assistant turn (needs a template TRL can mark, see its docs).
    """
    recipe = recipe_for(recipe, "sft", model)
    whole = bool(recipe.args.get("assistant_only_loss"))
    splits = sft_dataset(data, eval_fraction=recipe.eval_fraction, seed=recipe.seed, split_completion=not whole)
    return fit(recipe, splits, out, constitution_hash=constitution_hash, callbacks=callbacks)
