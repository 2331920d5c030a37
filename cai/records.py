"""Record types that cross module boundaries, and their TRL output forms: the one place that
defines them and converts between them.

- a chat message: ``{"role", "content"}`` (``Message``); ``check_messages`` validates a list of them,
  ``content_text`` reads a content given as OpenAI content parts;
- an SFT row: ``{"messages": [...prompt, assistant answer]}`` (``sft_row``);
- a preference row: ``{"prompt", "chosen", "rejected"}`` (TRL conversational), with the
  judge's ``score_chosen``, ``score_rejected``, ``margin`` and ``consistent`` when a judge
  scored it (``preference_row``);
- a trace: everything that happened to one sample (``Trace``, its rounds ``Step``), with the
  usage and seconds of each model call;
- a verdict: a judge's decision on one pair (``Verdict``, stored under ``trace.metadata["verify"]``).

``Trace.from_dict`` reads every stored form of a trace: fields added later (per-call usage and
timing) take their defaults when a stored trace lacks them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from cai.models.base import Message, Usage

CHAT_ROLES = ("system", "user", "assistant")
#: the judge's numbers a preference row carries when a judge scored the pair
PAIR_SCORES = ("score_chosen", "score_rejected", "margin", "consistent")


def message(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _value_error(field: str, problem: str) -> Exception:
    return ValueError(f"{field}: {problem}")


def check_messages(
    value: Any,
    name: str = "messages",
    *,
    roles: Collection[str] | None = CHAT_ROLES,
    last_role: str | None = None,
    error: Callable[[str, str], Exception] = _value_error,
) -> list[Message]:
    """``value`` as a list of plain ``{"role", "content"}`` messages (other keys dropped).

    ``roles``: the roles allowed (None: any string); ``last_role``: the role the last message
    must have. Raises ``error(field, problem)``, by default a ValueError ``field: problem``, e.g.
    ``messages[2].content: expected a string``."""
    if not isinstance(value, list) or not value:
        raise error(name, "expected a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        role = m.get("role") if isinstance(m, dict) else None
        if not isinstance(role, str) or (roles is not None and role not in roles) or "content" not in m:
            allowed = "|".join(roles) if roles is not None else "str"
            raise error(f"{name}[{i}]", f"expected {{'role': {allowed}, 'content': str}}")
        if not isinstance(m["content"], str):
            raise error(f"{name}[{i}].content", "expected a string")
        out.append(message(role, m["content"]))
    if last_role is not None and out[-1]["role"] != last_role:
        raise error(name, f"the conversation must end with a {last_role} turn")
    return out


# text content parts of the Chat Completions ("text") and Responses ("input_text", "output_text") APIs
TEXT_PART_TYPES = ("text", "input_text", "output_text")


def content_text(content: Any) -> str:
    """A message's content as text: OpenAI content parts as their text parts joined by
    newlines (other parts left out), None as ""."""
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") in TEXT_PART_TYPES
        )
    return str(content) if content else ""


def sft_row(prompt: Sequence[Message], answer: str) -> dict[str, Any]:
    """TRL conversational SFT row: the prompt turns and the answer."""
    return {"messages": [*prompt, message("assistant", answer)]}


def preference_row(
    prompt: Sequence[Message],
    chosen: str,
    rejected: str,
    *,
    scores: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """TRL conversational preference row. ``scores`` (a verdict or a label record) adds the
    ``PAIR_SCORES`` fields (None where it lacks one); ``extra`` fields (e.g. ``id``) come first."""
    row = {
        **extra,
        "prompt": list(prompt),
        "chosen": [message("assistant", chosen)],
        "rejected": [message("assistant", rejected)],
    }
    if scores is not None:
        row.update({k: scores.get(k) for k in PAIR_SCORES})
    return row


class Verdict(TypedDict, total=False):
    """A judge's decision on (final revision, initial answer); see ``judges.verify``."""

    judge: str
    status: str  # "ok" | "unparseable" | "failed"
    score_chosen: float | None
    score_rejected: float | None
    margin: float | None  # signed: negative when the initial answer wins
    consistent: bool | None  # both orders agreed (pairwise judges)
    kept: bool
    reason: str | None  # why not kept: initial_wins, inconsistent, tie, unparseable, low_margin, judge_failed
    error: str | None
    details: list[Any]


_SHARED = frozenset({str, float, int, bool, type(None)})


def _plain(value: Any) -> Any:
    """A copy of a JSON-like value: dicts, lists and tuples rebuilt, records as dicts, the rest shared."""
    if type(value) in _SHARED:  # most leaves: no isinstance walk
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (Step, Trace, Usage)):
        return value.to_dict()
    return value


def _to_dict(record: Any) -> dict[str, Any]:
    # not ``dataclasses.asdict``: its generic deep copy was a fifth of the engine's CPU per sample
    return {name: _plain(getattr(record, name)) for name in _FIELDS[type(record)]}


def _usages_from(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its usage fields as ``Usage`` (absent ones: zero, as in traces stored before they existed)."""
    return {**data, **{name: Usage.from_dict(data.get(name)) for name in _USAGE_FIELDS[cls]}}


@dataclass
class Step:
    """One critique -> revision round, with the usage and seconds of each of its two calls
    (zero usage when the call was not made: ``critique_usage.calls`` / ``revision_usage.calls``
    say whether it was)."""

    principle: str
    critique_request: str
    critique: str
    revision_request: str = ""
    revision: str | None = None  # None when the round stopped early
    accepted: bool = False  # the revision replaced the previous answer
    note: str = ""  # e.g. "no_revision_needed", "degenerate:empty"
    critique_usage: Usage = field(default_factory=Usage)
    critique_seconds: float = 0.0
    revision_usage: Usage = field(default_factory=Usage)
    revision_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(**_usages_from(cls, data))


@dataclass
class Trace:
    """Everything that happened to one sample. ``usage`` sums every call (the initial answer's
    and each step's); ``initial_usage`` / ``initial_seconds`` are the initial answer's call
    (zero when the answer was given, not generated)."""

    id: str
    prompt: list[Message]  # the conversation up to (and including) the last user turn
    initial: str = ""
    steps: list[Step] = field(default_factory=list)
    final: str = ""
    stop_reason: str = ""  # "completed" | "early_stop" | "failed"
    error: str | None = None  # failure reason when stop_reason == "failed"
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    constitution: str = ""  # Constitution.id
    metadata: dict[str, Any] = field(default_factory=dict)
    initial_usage: Usage = field(default_factory=Usage)
    initial_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.stop_reason != "failed"

    @property
    def revised(self) -> bool:
        return self.ok and bool(self.final) and self.final.strip() != self.initial.strip()

    @property
    def verdict(self) -> Verdict | None:
        """The judge's verdict on the pair, when a judge verified it."""
        return self.metadata.get("verify")

    @property
    def pair_kept(self) -> bool:
        """The sample makes a preference row: it was revised and, if a judge verified it, kept."""
        verdict = self.verdict
        return self.revised and (verdict is None or bool(verdict.get("kept")))

    def sft_record(self) -> dict[str, Any]:
        return sft_row(self.prompt, self.final)

    def preference_record(self) -> dict[str, Any] | None:
        """TRL conversational preference: chosen = final revision, rejected = initial answer."""
        if not self.revised:
            return None
        return preference_row(self.prompt, self.final, self.initial)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        data = _usages_from(cls, data)
        data["steps"] = [Step.from_dict(s) for s in data.get("steps", [])]
        return cls(**data)


_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in (Step, Trace)}
_USAGE_FIELDS = {cls: tuple(name for name in names if name.endswith("usage")) for cls, names in _FIELDS.items()}
