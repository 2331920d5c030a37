"""Record types that cross module boundaries, and their TRL output forms."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cai.models.base import Message, Usage


@dataclass
class Step:
    """One critique -> revision round."""

    principle: str
    critique_request: str
    critique: str
    revision_request: str = ""
    revision: str | None = None  # None when the round stopped early
    accepted: bool = False  # the revision replaced the previous answer
    note: str = ""  # e.g. "no_revision_needed", "degenerate:empty"


@dataclass
class Trace:
    """Everything that happened to one sample."""

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

    @property
    def ok(self) -> bool:
        return self.stop_reason != "failed"

    @property
    def revised(self) -> bool:
        return self.ok and bool(self.final) and self.final.strip() != self.initial.strip()

    def sft_record(self) -> dict[str, Any]:
        return {"messages": [*self.prompt, {"role": "assistant", "content": self.final}]}

    def preference_record(self) -> dict[str, Any] | None:
        """TRL conversational preference: chosen = final revision, rejected = initial answer."""
        if not self.revised:
            return None
        return {
            "prompt": list(self.prompt),
            "chosen": [{"role": "assistant", "content": self.final}],
            "rejected": [{"role": "assistant", "content": self.initial}],
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usage"] = self.usage.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        data = dict(data)
        data["steps"] = [Step(**s) for s in data.get("steps", [])]
        data["usage"] = Usage.from_dict(data.get("usage"))
        return cls(**data)
