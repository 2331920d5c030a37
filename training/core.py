"""The one place a TRL trainer is built, run (resuming from its last checkpoint), and saved
with its provenance. The per-method modules (sft, reward, preference, rl, spin) only prepare
data and trainer-specific arguments."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import distributed
from training.data import Splits
from training.provenance import is_done, mark_done, read_provenance, write_provenance
from training.recipes import Recipe, trl_class

CHECKPOINTS = "checkpoints"
LOG_FILE = "trainer_log.json"


@dataclass
class TrainResult:
    path: Path  # folder with the final weights, tokenizer and provenance
    log_history: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False  # True when the folder was already complete

    @property
    def metrics(self) -> dict[str, Any]:
        """The last value of every logged metric."""
        merged: dict[str, Any] = {}
        for entry in self.log_history:
            merged.update(entry)
        return merged


def resolve_model(spec: str) -> str:
    """A recipe's model -> something ``from_pretrained`` takes (folder or hub id)."""
    if spec == "embedded":
        from cai.models.embedded import export_embedded

        return str(export_embedded())
    if spec.startswith("hf:"):
        return spec[3:]
    return spec


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def fit(
    recipe: Recipe,
    splits: Splits,
    out: str | Path,
    *,
    trainer_kwargs: dict[str, Any] | None = None,
    constitution_hash: str | None = None,
    provenance: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train ``recipe`` on ``splits`` into ``out``. A finished folder is returned as is; an
    interrupted one resumes from its last checkpoint (``out/checkpoints``).

    Launched in several processes (``accelerate launch`` / ``torchrun``), every process calls
    this with the same arguments: they must agree on ``out`` (and whether it is finished), train
    together, and only the main process writes the log, provenance and done marker, before
    every process returns."""
    out = Path(out)
    config = None
    if distributed.world().size > 1:
        config = recipe.trl_config(out / CHECKPOINTS)
        _ = config.device  # starts the process group the trainer will use
        distributed.agree("the output folder and its done marker", (str(out.resolve()), is_done(out)))
    if is_done(out):
        log = json.loads((out / LOG_FILE).read_text()) if (out / LOG_FILE).is_file() else []
        return TrainResult(out, log, resumed=True)
    out.mkdir(parents=True, exist_ok=True)
    with distributed.main_first():  # one export / download, then the others read it
        base = resolve_model(recipe.model)
        tokenizer = load_tokenizer(base)
    config = config or recipe.trl_config(out / CHECKPOINTS)
    trainer_cls = trl_class(recipe.trainer, config=False)
    trainer = trainer_cls(
        model=base,
        args=config,
        train_dataset=splits.train,
        eval_dataset=splits.eval,
        processing_class=tokenizer,
        peft_config=recipe.peft_config(),
        callbacks=callbacks,
        **(trainer_kwargs or {}),
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(out / CHECKPOINTS))
    save_final(trainer, recipe, out)
    log_history = list(trainer.state.log_history)
    if trainer.is_world_process_zero():
        (out / LOG_FILE).write_text(json.dumps(log_history, indent=1))
        final = {k: v for k, v in TrainResult(out, log_history).metrics.items() if isinstance(v, (int, float))}
        write_provenance(
            out,
            trainer=recipe.trainer,
            base_model=recipe.model if recipe.model == "embedded" else base,
            base_provenance=read_provenance(base) if Path(base).is_dir() else None,
            recipe=recipe.model_dump(mode="json"),
            data_hash=splits.data_hash,
            constitution_hash=constitution_hash,
            metrics=final,
            extra={"distributed": distributed.describe(trainer), **(provenance or {})},
        )
        mark_done(out)
    distributed.barrier()  # every process returns a finished folder
    return TrainResult(out, log_history)


def last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder))


def save_final(trainer: Any, recipe: Recipe, out: Path) -> None:
    """Save weights + tokenizer to ``out``; a LoRA adapter is merged when the recipe asks, so
    the folder loads as a plain model (``hf:FOLDER``)."""
    model = trainer.model
    if recipe.peft is not None and recipe.peft.merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(out)
            trainer.processing_class.save_pretrained(out)
    else:
        trainer.save_model(str(out))  # every process: ZeRO-3 gathers the shards, rank 0 writes
