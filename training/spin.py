"""SPIN-style self-play: each round the current policy answers the prompts, and DPO trains it
to prefer the reference responses (chosen) over its own answers (rejected).

Rounds live in ``out/round-1``, ``out/round-2``, ...; each holds its pairs
(``pairs.jsonl``) and the model it produced, which the next round starts from. A finished
round is skipped on rerun, so a killed run resumes at the round it was in.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from cai.aio import run_sync
from cai.models.base import GenParams
from cai.records import preference_row
from training.core import TrainResult, fit, resolve_model
from training.data import preference_dataset, prompt_dataset
from training.distributed import require_one_process
from training.provenance import is_done
from training.recipes import Recipe, SpinOptions, recipe_for

PAIRS_FILE = "pairs.jsonl"


async def policy_answers(model_dir: str, prompts: list[list[dict[str, str]]], params: GenParams) -> list[str]:
    from cai.models import load_model

    model = load_model(f"hf:{model_dir}")
    try:
        completions = await asyncio.gather(*(model.chat(p, params) for p in prompts))
    finally:
        await model.aclose()
    return [c.text for c in completions]


def spin_pairs(model_dir: str, rows: list[dict[str, Any]], options: SpinOptions, seed: int) -> list[dict[str, Any]]:
    """Preference pairs: reference (chosen) vs the policy's answer (rejected). Prompts the
    policy already answers exactly like the reference are dropped (nothing to learn)."""
    params = GenParams(max_tokens=options.max_new_tokens, temperature=options.temperature, seed=seed)
    answers = run_sync(policy_answers(model_dir, [r["prompt"] for r in rows], params))
    return [
        preference_row(row["prompt"], row["reference"], answer)
        for row, answer in zip(rows, answers)
        if answer.strip() and answer.strip() != row["reference"].strip()
    ]


def train_spin(
    data: Any,
    out: str | Path,
    *,
    recipe: str | Path | Recipe = "spin-embedded-cpu",
    model: str | None = None,
    rounds: int | None = None,
    constitution_hash: str | None = None,
) -> TrainResult:
    """Run SPIN rounds on SFT data (``sft.jsonl``: the final assistant turn is the reference).
    Returns the last round's result; its folder holds the final model."""
    require_one_process("SPIN (cai train spin)")
    recipe = recipe_for(recipe, "spin", model)
    options = recipe.spin or SpinOptions.model_validate({})
    if rounds is not None:
        options = options.model_copy(update={"rounds": rounds})
    rows = [r for r in prompt_dataset(data).train.to_list() if r["reference"]]
    if not rows:
        raise ValueError(f"{data}: SPIN needs reference responses (SFT records ending with an assistant turn)")
    out = Path(out)
    current = resolve_model(recipe.model)
    result: TrainResult | None = None
    for round_no in range(1, options.rounds + 1):
        round_dir = out / f"round-{round_no}"
        round_dir.mkdir(parents=True, exist_ok=True)
        pairs_path = round_dir / PAIRS_FILE
        if not is_done(round_dir) and not pairs_path.is_file():
            pairs = spin_pairs(current, rows, options, recipe.seed + round_no)
            tmp = pairs_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
            tmp.replace(pairs_path)
        if not pairs_path.stat().st_size:
            raise ValueError(f"{pairs_path}: the policy reproduced every reference; nothing left to train on")
        splits = preference_dataset(pairs_path)
        dpo = recipe.model_copy(update={"trainer": "dpo", "model": current, "spin": None})
        result = fit(
            dpo,
            splits,
            round_dir,
            constitution_hash=constitution_hash,
            provenance={"spin_round": round_no, "spin_rounds": options.rounds},
        )
        current = str(round_dir)
    assert result is not None
    return result
