"""Evaluation during training: ``WinRateCallback`` (TRL removed its own in 1.1).

At the start of training the model answers a few held-out prompts: those answers are the
reference (the model before any step, i.e. DPO's reference model). Every ``every`` steps,
and at the last step, the model under training answers them again (greedy, in-process, with
the engine's batch decoder) and a cai judge scores the pair:

- a pairwise judge (``pairwise:MODEL``, both orders): ``eval_win_rate`` of the current answers
  against the reference ones (ties and inconsistent verdicts count 1/2), ``eval_win``,
  ``eval_tie``, ``eval_loss``, ``eval_inconsistent``, ``eval_unparseable``;
- a pointwise judge (``violation:MODEL``, ``rm:PATH``, ...): ``eval_judge_score`` and
  ``eval_judge_score_reference`` (mean scores);
- always, by the rules judge: ``eval_refusal`` on all prompts, and ``eval_refusal_unsafe`` /
  ``eval_over_refusal`` (safe prompts) when the prompt file has a ``label`` column.

The numbers go into the trainer's log at that step: ``state.log_history`` (so
``trainer_log.json``) and the console; reporting integrations added before this callback
(wandb, tensorboard) see the trainer's own entries only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from cai.models.base import GenParams
from judges.base import PairwiseJudge, PointwiseJudge
from judges.rules import RefusalJudge
from judges.safety import EvalPrompt, read_eval_prompts
from judges.trl import JudgeReward
from judges.winrate import compare_answers, winrate_metrics

logger = logging.getLogger(__name__)


def generate(model: Any, tokenizer: Any, prompts: Sequence[EvalPrompt], max_new_tokens: int) -> list[str]:
    """Greedy answers of an in-memory transformers model, batched by the engine's decoder."""
    import torch

    from cai.models.hf_decode import BatchDecoder, DecodeRequest

    params = GenParams(max_tokens=max_new_tokens)
    requests = [
        DecodeRequest(
            list(
                tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            ),
            params,
            max_new_tokens,
        )
        for p in prompts
    ]
    configured = getattr(model.generation_config, "eos_token_id", None)
    eos = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [
                c.text for c in BatchDecoder(model, tokenizer, {e for e in eos if e is not None}, pad).run(requests)
            ]
    finally:
        model.train(was_training)


class WinRateCallback(TrainerCallback):
    """Logs win-rate vs the reference model and refusal rates every ``every`` steps.

    Args:
        prompts: a prompt file (``label`` / ``category`` columns optional) or ``EvalPrompt``s.
        judge: a judge spec (``pairwise:embedded``, ``violation:openai:NAME``, ...) or judge.
        every: evaluate every N optimizer steps (and at the last step).
        limit: use the first N prompts (of each label, when labelled).
        max_new_tokens: answer length.
        judge_options / model_options: passed to ``load_judge``.
    """

    def __init__(
        self,
        prompts: str | Path | Sequence[EvalPrompt],
        judge: Any,
        *,
        every: int = 50,
        limit: int | None = None,
        max_new_tokens: int = 64,
        tokenizer: Any = None,
        judge_options: dict[str, Any] | None = None,
        model_options: dict[str, Any] | None = None,
    ):
        from judges.registry import load_judge

        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if isinstance(prompts, (str, Path)):
            prompts = read_eval_prompts(prompts, limit=limit, require_label=False)
        self.prompts = list(prompts)
        self.judge = load_judge(judge, model_options=model_options, **(judge_options or {}))
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.tokenizer = tokenizer
        self.reference: list[str] = []
        self.history: list[dict[str, float]] = []  # every evaluation's metrics, with "step"
        self._pending: dict[str, float] | None = None
        self._runner = JudgeReward(
            self.judge, reference_key="reference", centered=False, concurrency=16, name="winrate"
        )

    def _run(self, coro: Any) -> Any:
        return self._runner._background_loop().submit(coro)

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.tokenizer = self.tokenizer or processing_class
        if not self.reference:
            self.reference = generate(model, self.tokenizer, self.prompts, self.max_new_tokens)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every and state.global_step != state.max_steps:
            return control
        self._pending = {
            **self.evaluate(generate(model, self.tokenizer, self.prompts, self.max_new_tokens)),
            "step": state.global_step,
        }
        self.history.append(self._pending)
        logger.info("step %d: %s", state.global_step, self._pending)
        control.should_log = True  # the trainer logs at this step; on_log adds our numbers
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None:
            return control
        metrics = {k: v for k, v in self._pending.items() if k != "step"}
        if logs is not None:
            logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == self._pending["step"]:
            state.log_history[-1].update(metrics)
        else:
            state.log_history.append(dict(self._pending))
        self._pending = None
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._pending is not None:  # the last step's numbers when no log followed
            state.log_history.append(dict(self._pending))
            self._pending = None
        self._runner.close()

    def evaluate(self, answers: Sequence[str]) -> dict[str, float]:
        """Metrics of ``answers`` (one per prompt) against the reference answers."""
        metrics: dict[str, float] = {}
        prompts = [p.messages for p in self.prompts]
        judge = self.judge
        if isinstance(judge, PairwiseJudge):

            async def compare_all():
                return await asyncio.gather(
                    *(compare_answers(judge, p, a, r) for p, a, r in zip(prompts, answers, self.reference))
                )

            report = winrate_metrics(self._run(compare_all()), n_boot=200)
            if report.win_rate is not None:
                metrics["eval_win_rate"] = report.win_rate
            metrics.update(
                eval_win=report.wins,
                eval_tie=report.ties,
                eval_loss=report.losses,
                eval_inconsistent=report.inconsistent,
                eval_unparseable=report.unparseable,
            )
        elif isinstance(self.judge, PointwiseJudge):
            scores = self._run(self.judge.score_many(list(zip(prompts, answers)) + list(zip(prompts, self.reference))))
            now = [s.value for s in scores[: len(answers)] if s.ok]
            before = [s.value for s in scores[len(answers) :] if s.ok]
            if now:
                metrics["eval_judge_score"] = sum(now) / len(now)
            if before:
                metrics["eval_judge_score_reference"] = sum(before) / len(before)
        rules = RefusalJudge()
        refused = [(p.label, rules.is_refusal(a)) for p, a in zip(self.prompts, answers)]
        metrics["eval_refusal"] = sum(r for _, r in refused) / len(refused)
        for label, name in (("unsafe", "eval_refusal_unsafe"), ("safe", "eval_over_refusal")):
            mine = [r for lab, r in refused if lab == label]
            if mine:
                metrics[name] = sum(mine) / len(mine)
        return metrics
