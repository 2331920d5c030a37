"""Online RLAIF: GRPO or RLOO with a cai judge as the reward function.

This is today's path for what older tutorials (and the seed) call the PPO step: TRL removed
``PPOTrainer(config, model, ref_model, tokenizer).step()``; GRPO/RLOO sample several
completions per prompt, score them with the reward functions, and update the policy. cai's
judges become reward functions through ``judges.trl.reward_function``. On GPU, set
``use_vllm: true`` in the recipe's ``args`` for vLLM generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from training.core import TrainResult, fit
from training.data import prompt_dataset
from training.recipes import Recipe, RecipeError, RLOptions, load_recipe

RewardFunc = Callable[..., list]


def judge_reward(judge: Any, recipe: Recipe) -> Any:
    """A TRL reward function over a judge (a spec string or a judge object)."""
    from judges import load_judge
    from judges.trl import reward_function

    options = recipe.rl or RLOptions()
    if isinstance(judge, str) or judge is None:
        judge = load_judge(judge or options.judge, model_options=options.model_options, **options.judge_options)
    return reward_function(judge, centered=options.centered)


def train_rl(
    prompts: Any,
    out: str | Path,
    *,
    recipe: str | Path | Recipe = "grpo-embedded-cpu",
    model: str | None = None,
    judge: Any = None,
    reward_funcs: Sequence[RewardFunc] | None = None,
    constitution_hash: str | None = None,
) -> TrainResult:
    """Train on prompts (``prompt``/``messages`` records; ``sft.jsonl`` works) with GRPO or RLOO
    (the recipe's ``trainer``). The reward is ``judge`` (spec or judge object; default: the
    recipe's ``rl.judge``), or the given ``reward_funcs`` (TRL's signature
    ``f(prompts, completions, **columns) -> list[float | None]``)."""
    recipe = load_recipe(recipe, **({"model": model} if model else {}))
    if recipe.trainer not in ("grpo", "rloo"):
        raise RecipeError(f"{recipe.source}: trainer: online RL needs 'grpo' or 'rloo', not '{recipe.trainer}'")
    splits = prompt_dataset(prompts, eval_fraction=recipe.eval_fraction, seed=recipe.seed)
    funcs = list(reward_funcs) if reward_funcs else [judge_reward(judge, recipe)]
    owned = not reward_funcs and not hasattr(judge, "name")  # we built the judge: we close it
    names = [getattr(f, "__name__", type(f).__name__) for f in funcs]
    try:
        return fit(
            recipe,
            splits,
            out,
            trainer_kwargs={"reward_funcs": funcs},
            constitution_hash=constitution_hash,
            provenance={"rewards": names},
        )
    finally:
        if owned:
            cast(Any, funcs[0]).close()  # judge_reward's reward function owns the judge and its loop
