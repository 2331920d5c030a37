"""Judge spec strings -> judges.

  pairwise:MODEL_SPEC     LLMPairwiseJudge     e.g. pairwise:openai:gpt-4o-mini, pairwise:embedded
  pointwise:MODEL_SPEC    RubricJudge          e.g. pointwise:embedded
  violation:MODEL_SPEC    ViolationJudge       (option principle=...)
  rm:PATH                 RewardModelJudge
  rules:refusal | rules:length:MIN:MAX | rules:regex:PATTERN

Third-party judges register a factory ``(rest: str, **options) -> judge`` under the entry
point group ``cai.judges``; the spec ``NAME:REST`` then calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from cai.models.base import ChatModel
from cai.models.registry import load_model
from cai.store import CachedModel, RunStore
from judges.base import PairwiseJudge, PointwiseJudge

ENTRY_POINT_GROUP = "cai.judges"
KINDS = ("pairwise", "pointwise", "violation", "rm", "rules")


class JudgeSpecError(ValueError):
    pass


def _model(
    rest: str, model: ChatModel | None, model_options: dict[str, Any] | None, store: RunStore | None
) -> ChatModel:
    if model is None:
        if not rest:
            raise JudgeSpecError("judge spec needs a model, e.g. 'pairwise:embedded' or 'pairwise:openai:MODEL'")
        model = load_model(rest, **(model_options or {}))
    return CachedModel(model, store) if store is not None else model


def _rules(rest: str, **options: Any) -> PointwiseJudge:
    from judges.rules import LengthJudge, RefusalJudge, RegexJudge

    name, _, arg = rest.partition(":")
    if name == "refusal":
        return RefusalJudge(**options)
    if name == "length":
        low, _, high = arg.partition(":")
        try:
            return LengthJudge(int(low or 0), int(high) if high else None, **options)
        except ValueError as exc:
            raise JudgeSpecError(f"bad length spec {rest!r}; expected rules:length:MIN:MAX ({exc})") from exc
    if name == "regex":
        if not arg:
            raise JudgeSpecError("rules:regex needs a pattern, e.g. rules:regex:^Sure")
        return RegexJudge(arg, **options)
    raise JudgeSpecError(f"unknown rule {name!r}; known: refusal, length, regex")


def available_judges() -> list[str]:
    return sorted(set(KINDS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_judge(
    spec: str | PairwiseJudge | PointwiseJudge,
    *,
    model: ChatModel | None = None,
    model_options: dict[str, Any] | None = None,
    store: RunStore | None = None,
    **options: Any,
) -> PairwiseJudge | PointwiseJudge:
    """Build a judge from a spec string (a judge passes through unchanged).

    ``model`` overrides the model part of the spec; ``model_options`` go to ``load_model``
    (e.g. base_url, api_key); with ``store`` the judge's model calls are cached in that run
    store (a rerun or resume repeats no finished call); other options go to the judge class.
    """
    if isinstance(spec, (PairwiseJudge, PointwiseJudge)):
        return spec
    kind, _, rest = spec.strip().partition(":")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            factory: Callable[..., Any] = ep.load()
            return factory(rest, **options)
    if kind == "pairwise":
        from judges.pairwise import LLMPairwiseJudge

        return LLMPairwiseJudge(_model(rest, model, model_options, store), **options)
    if kind == "pointwise":
        from judges.pointwise import RubricJudge

        return RubricJudge(_model(rest, model, model_options, store), **options)
    if kind == "violation":
        from judges.violation import ViolationJudge

        return ViolationJudge(_model(rest, model, model_options, store), **options)
    if kind == "rm":
        from judges.reward_model import RewardModelJudge

        if not rest:
            raise JudgeSpecError("rm judge needs a path: rm:PATH")
        return RewardModelJudge(rest, **options)
    if kind == "rules":
        return _rules(rest, **options)
    raise JudgeSpecError(f"unknown judge kind {kind!r} in spec {spec!r}; known: {', '.join(available_judges())}")
