"""Inference-time constitutional wrapper: a ChatModel that puts a constitution in front of
another ChatModel.

    wrapped = ConstitutionalWrapper(load_model("embedded"), "harmless")
    reply = await wrapped.chat([{"role": "user", "content": "How do I pick a lock?"}])
    reply.text, reply.trace.steps

Modes:
  ``off``      pass-through: the upstream answer, unchanged (the trace still records timing).
  ``always``   every answer goes through the critique/revision loop (``cai.revise.revise``).
  ``on_flag``  a cheap violation judge scores the answer; only flagged answers are revised.
  ``block``    flagged answers are replaced by ``refusal``.

The critique/revision loop is the engine's ``revise``, given the answer the wrapper already
has (``initial=``); this module adds the gating, the per-stage timing and token accounting
(the loop's stages are read from the usage and seconds each ``Step`` records), and the
ChatModel interface so wrappers compose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cai.constitution import Constitution, Sampling, load_constitution
from cai.errors import RevisionFailed
from cai.models.base import (
    Capabilities,
    ChatModel,
    Completion,
    FinishReason,
    GenParams,
    Message,
    Usage,
)
from cai.records import Trace
from cai.revise_config import ReviseConfig

Mode = Literal["off", "always", "on_flag", "block"]
MODES: tuple[str, ...] = ("off", "always", "on_flag", "block")
DEFAULT_REFUSAL = "I can't help with that request."


class ViolationScorer(Protocol):
    """What the wrapper needs from a judge (``judges.ViolationJudge`` fits): an async
    ``score(prompt, response)`` whose result has ``value`` = p(violation) and ``status``."""

    name: str

    async def score(self, prompt: Sequence[Message], response: str) -> Any: ...


@dataclass
class StageTiming:
    stage: str  # "initial" | "judge" | "critique" | "revision"
    seconds: float
    usage: Usage = field(default_factory=Usage)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "seconds": round(self.seconds, 6), **self.usage.to_dict()}


@dataclass
class WrappedCompletion(Completion):
    """A Completion whose text is the final answer, with the wrapper's trace attached."""

    trace: Trace | None = None


def as_text_conversation(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """The conversation as the critique/revision loop and the judges take it (system, user and
    assistant text turns): a tool call becomes the assistant's text, a tool result a user turn."""
    out: list[Message] = []
    for m in messages:
        role, content = m.get("role"), m.get("content") or ""
        if role == "tool":
            out.append({"role": "user", "content": f"[tool result]\n{content}"})
        elif role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(
                f"[tool call] {c.get('function', {}).get('name')}({c.get('function', {}).get('arguments', '')})"
                for c in m["tool_calls"]
            )
            out.append({"role": "assistant", "content": f"{content}\n{calls}".strip()})
        else:
            out.append({"role": str(role), "content": content})
    return out


def _final_finish(trace: Trace, initial: Completion) -> FinishReason:
    """Why the answer that is sent ended: the initial answer's reason, or ``length`` when the
    revision that became the final answer was cut off (``revise`` notes it as truncated)."""
    if trace.final == initial.text:
        return initial.finish_reason
    for step in reversed(trace.steps):
        if step.revision == trace.final:
            return "length" if step.note == "truncated" else "stop"
    return "stop"


def _score_value(score: Any) -> float | None:
    """p(violation) from a judge result; None when the judge could not say."""
    if isinstance(score, (int, float)):
        return float(score)
    if getattr(score, "status", "ok") != "ok":
        return None
    value = getattr(score, "value", None)
    return None if value is None else float(value)


def _loop_stages(trace: Trace) -> list[StageTiming]:
    """The critique and revision calls of the loop, from the steps ``revise`` recorded."""
    stages = []
    for step in trace.steps:
        for stage, usage, seconds in (
            ("critique", step.critique_usage, step.critique_seconds),
            ("revision", step.revision_usage, step.revision_seconds),
        ):
            if usage.calls:
                stages.append(StageTiming(stage, seconds, usage))
    return stages


class ConstitutionalWrapper(ChatModel):
    """``config`` holds the loop's settings; ``revisions``, ``sampling``, ``seed`` and
    ``few_shot`` are the older spelling of the same (``None``: the constitution's default)."""

    def __init__(
        self,
        model: ChatModel,
        constitution: Constitution | str = "harmless",
        *,
        mode: Mode = "always",
        revisions: int | None = None,
        judges: Sequence[ViolationScorer] = (),
        threshold: float = 0.5,
        refusal: str = DEFAULT_REFUSAL,
        sampling: Sampling | None = None,
        seed: int | None = None,
        few_shot: bool | None = None,
        config: ReviseConfig | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if mode in ("on_flag", "block") and not judges:
            raise ValueError(f"mode {mode!r} needs at least one violation judge (judges=[...])")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
        self.model = model
        self.constitution = load_constitution(constitution)
        self.mode: Mode = mode
        self.config = ReviseConfig.resolve(
            self.constitution, config, revisions=revisions, sampling=sampling, seed=seed, few_shot=few_shot
        )
        self.judges = list(judges)
        self.threshold = threshold
        self.refusal = refusal
        self.spec = f"cai:{self.constitution.name}({model.spec})"

    @property
    def capabilities(self) -> Capabilities:
        # log-probs of the upstream's first answer do not describe a revised text
        return Capabilities(max_context=self.model.capabilities.max_context)

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        return self.model.count_tokens(messages)

    async def aclose(self) -> None:
        await self.model.aclose()

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> WrappedCompletion:
        start = time.perf_counter()
        initial = await self.model.chat(messages, params)
        stage = StageTiming("initial", time.perf_counter() - start, initial.usage)
        return await self._apply(list(messages), initial, params, [stage])

    async def apply(
        self, messages: Sequence[Message], answer: str | Completion, params: GenParams | None = None
    ) -> WrappedCompletion:
        """Run the constitution over an answer produced elsewhere (e.g. a proxy's response)."""
        initial = answer if isinstance(answer, Completion) else Completion(answer)
        return await self._apply(list(messages), initial, params, [])

    async def _apply(
        self, prompt: list[Message], initial: Completion, params: GenParams | None, stages: list[StageTiming]
    ) -> WrappedCompletion:
        trace = Trace(
            id="",
            prompt=as_text_conversation(prompt),
            initial=initial.text,
            final=initial.text,
            stop_reason="completed",
            usage=initial.usage,
            model=self.model.spec,
            constitution=self.constitution.id,
            metadata={"mode": self.mode, "action": "passed", "judge": []},
            initial_usage=initial.usage,
            initial_seconds=sum(s.seconds for s in stages),
        )
        finish: FinishReason = initial.finish_reason
        flagged = self.mode == "always"
        if self.judges and self.mode != "off":
            start = time.perf_counter()
            results = await asyncio.gather(*(j.score(trace.prompt, initial.text) for j in self.judges))
            judge_usage = sum((getattr(r, "usage", Usage()) for r in results), Usage())
            stages.append(StageTiming("judge", time.perf_counter() - start, judge_usage))
            trace.usage = trace.usage + judge_usage
            scores = [_score_value(r) for r in results]
            trace.metadata["judge"] = [
                {"judge": getattr(j, "name", type(j).__name__), "p_violation": s} for j, s in zip(self.judges, scores)
            ]
            # a judge that cannot tell counts as a flag: the wrapper fails closed
            flagged = flagged or any(s is None or s >= self.threshold for s in scores)

        if flagged and self.mode == "block":
            trace.final = self.refusal
            trace.metadata["action"] = "blocked"
            finish = "stop"
        elif flagged and self.mode in ("always", "on_flag"):
            finish = await self._revise(trace, initial, params)
            stages.extend(_loop_stages(trace))

        trace.metadata["stages"] = [s.to_dict() for s in stages]
        return WrappedCompletion(
            text=trace.final,
            finish_reason=finish,
            usage=trace.usage,
            # log-probs describe the initial answer only; a revised or refused text has none
            logprobs=initial.logprobs if trace.final == initial.text and trace.metadata["action"] == "passed" else None,
            model=self.spec,
            trace=trace,
        )

    async def _revise(self, trace: Trace, initial: Completion, params: GenParams | None) -> FinishReason:
        from cai.revise import revise

        config = self.config.replace(params=params or GenParams())
        revised = await revise(self.model, trace.prompt, self.constitution, config, initial=initial)
        if not revised.ok and "error_message" in revised.metadata:
            # the model failed mid-loop: withhold the unrevised answer rather than pass it on
            raise RevisionFailed(
                f"critique/revision loop failed ({revised.error}): {revised.metadata['error_message']}"
            )
        trace.steps = revised.steps
        trace.usage = sum((s.critique_usage + s.revision_usage for s in revised.steps), trace.usage)
        trace.metadata["revise_stop_reason"] = revised.stop_reason
        if revised.ok:
            trace.final = revised.final
            trace.metadata["action"] = "revised" if revised.revised else "kept"
        else:  # e.g. an empty answer: nothing usable came out of the loop, the answer stands
            trace.metadata["action"] = "kept"
            trace.metadata["revise_error"] = revised.error
        return _final_finish(trace, initial)
