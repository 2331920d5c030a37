"""Judge spec strings -> judges.

  pairwise:MODEL_SPEC     LLMPairwiseJudge     e.g. pairwise:openai:gpt-4o-mini, pairwise:embedded
  pointwise:MODEL_SPEC    RubricJudge          e.g. pointwise:embedded
  violation:MODEL_SPEC    ViolationJudge       (option principle=...)
  rm:PATH                 RewardModelJudge
  rules:refusal | rules:length:MIN:MAX | rules:regex:PATTERN

Third-party judges register a factory ``(rest: str, **options) -> judge`` under the entry
point group ``cai.judges``; the spec ``NAME:REST`` then calls it. A plugin judge that keeps its
ChatModel in ``.model`` (as the built-in LLM judges do) gets it wrapped in the run store's
``CachedModel`` when a store is given, so its calls are cached and resumed like theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from cai.errors import JudgeSpecError
from cai.models.base import ChatModel
from cai.models.registry import load_model
from cai.store import CachedModel, RunStore
from judges.base import Judge, PairwiseJudge, PointwiseJudge

ENTRY_POINT_GROUP = "cai.judges"
KINDS = ("pairwise", "pointwise", "violation", "rm", "rules")
MODEL_KINDS = ("pairwise", "pointwise", "violation")  # REST is a model spec


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


def _plugin(kind: str) -> Callable[..., Any] | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            factory: Callable[..., Any] = ep.load()
            return factory
    return None


def judge_model_spec(spec: str) -> str | None:
    """The model spec inside a built-in LLM judge's spec (``pairwise:embedded`` ->
    ``embedded``); None for judges without one (rules, rm, plugins) or an empty model part."""
    kind, _, rest = spec.strip().partition(":")
    if kind not in MODEL_KINDS or not rest.strip() or _plugin(kind) is not None:
        return None
    return rest.strip()


def _cache_plugin(judge: Judge, store: RunStore | None) -> Judge:
    model = getattr(judge, "model", None)
    if store is not None and isinstance(model, ChatModel) and not isinstance(model, CachedModel):
        setattr(judge, "model", CachedModel(model, store))  # noqa: B010  (plugin judges declare no .model)
    return judge


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
    store (a rerun or resume repeats no finished call; plugin judges: see the module
    docstring); other options go to the judge class (or the plugin's factory).
    """
    if isinstance(spec, (PairwiseJudge, PointwiseJudge)):
        return spec
    kind, _, rest = spec.strip().partition(":")
    factory = _plugin(kind)
    if factory is not None:
        return _cache_plugin(factory(rest, **options), store)
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
