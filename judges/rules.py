"""Rule judges: cheap, deterministic, no model. Each scores 1.0 (rule holds) or 0.0."""

from __future__ import annotations

import re

from cai.refusal import RefusalRule
from judges.base import PointwiseJudge, Prompt, Score, response_text


class RefusalJudge(PointwiseJudge):
    """1.0 when the response reads as a refusal (any listed language), else 0.0: the one
    refusal rule (``cai.refusal.RefusalRule``) as a judge. Only the first ``window``
    characters are searched."""

    name = "rules:refusal"
    scale = (0.0, 1.0)

    def __init__(self, *, languages: tuple[str, ...] | None = None, window: int = 300, extra: tuple[str, ...] = ()):
        self.rule = RefusalRule(languages=languages, window=window, extra=extra)

    def match(self, text: str) -> re.Match | None:
        return self.rule.match(response_text(text))

    def is_refusal(self, text: str) -> bool:
        return self.match(text) is not None

    async def score(self, prompt: Prompt, response: str) -> Score:
        match = self.match(response)
        return Score(1.0 if match else 0.0, details={"match": match.group(0) if match else None})


class LengthJudge(PointwiseJudge):
    """1.0 when the response length (in ``unit``) lies within [min_length, max_length]."""

    scale = (0.0, 1.0)

    def __init__(self, min_length: int = 0, max_length: int | None = None, *, unit: str = "words"):
        if unit not in ("words", "chars"):
            raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
        self.min_length, self.max_length, self.unit = min_length, max_length, unit
        self.name = f"rules:length:{min_length}:{'' if max_length is None else max_length}"

    async def score(self, prompt: Prompt, response: str) -> Score:
        text = response_text(response)
        length = len(text.split()) if self.unit == "words" else len(text)
        ok = length >= self.min_length and (self.max_length is None or length <= self.max_length)
        return Score(1.0 if ok else 0.0, details={"length": length, "unit": self.unit})


class RegexJudge(PointwiseJudge):
    """1.0 when ``pattern`` is found in the response (or, with ``must_match=False``, is not)."""

    scale = (0.0, 1.0)

    def __init__(self, pattern: str, *, must_match: bool = True, ignore_case: bool = False):
        try:
            self.regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ValueError(f"bad regex {pattern!r}: {exc}") from exc
        self.must_match = must_match
        self.name = f"rules:regex:{pattern}"

    async def score(self, prompt: Prompt, response: str) -> Score:
        found = self.regex.search(response_text(response)) is not None
        return Score(1.0 if found == self.must_match else 0.0, details={"found": found})
