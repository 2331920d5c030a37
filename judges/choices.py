"""Reading a judge's choice from answer-token log-probs, or from text when there are none.

Pure functions shared by the pairwise, pointwise and violation judges.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from cai.models.base import ChatModel, Completion, TokenLogprob

_STRIP = " \t\n\r()[]*.:'\"`,"


def logprob_settings(model: ChatModel, logprobs: bool | None, top_logprobs: int) -> tuple[bool, int]:
    """Whether a judge reads log-probs (None = when the backend can), and how many alternatives."""
    caps = model.capabilities
    use = caps.logprobs if logprobs is None else (logprobs and caps.logprobs)
    return use, min(top_logprobs, caps.max_top_logprobs or top_logprobs)


def token_label(token: str, labels: Sequence[str], *, case_sensitive: bool = True) -> str | None:
    """The label a token spells ("(A" -> "A", " yes" -> "Yes"), or None."""
    core = token.strip(_STRIP)
    for label in labels:
        if core == label or (not case_sensitive and core.casefold() == label.casefold()):
            return label
    return None


def label_mass(position: TokenLogprob, labels: Sequence[str], *, case_sensitive: bool = True) -> dict[str, float]:
    """Probability mass on each label among one position's token and top alternatives.

    Variants of a label (" A", "A", "(A") are summed; the generated token counts once even if
    the backend also lists it among the alternatives.
    """
    alternatives = dict(position.top)
    alternatives.setdefault(position.token, position.logprob)
    mass = {label: 0.0 for label in labels}
    for token, logprob in alternatives.items():
        label = token_label(token, labels, case_sensitive=case_sensitive)
        if label is not None and logprob is not None and logprob > -math.inf:
            mass[label] += math.exp(logprob)
    return mass


def answer_position(completion: Completion, labels: Sequence[str]) -> TokenLogprob | None:
    """The token that carries the answer: the first token for one-token answers, otherwise the
    last label token after the final "answer" marker (chain-of-thought)."""
    tokens = completion.logprobs or []
    if not tokens:
        return None
    if len(tokens) == 1:
        return tokens[0]
    text, starts = "", []
    for tok in tokens:
        starts.append(len(text))
        text += tok.token
    marker = text.lower().rfind("answer")
    for i in range(len(tokens) - 1, -1, -1):
        if starts[i] < marker:
            break
        if token_label(tokens[i].token, labels) is not None:
            return tokens[i]
    return tokens[0] if token_label(tokens[0].token, labels) is not None else None


def binary_probability(completion: Completion, first: str, second: str, *, case_sensitive: bool = True) -> float | None:
    """p(first) / (p(first) + p(second)) at the answer token, or None when neither is there."""
    position = answer_position(completion, (first, second))
    if position is None:
        return None
    mass = label_mass(position, (first, second), case_sensitive=case_sensitive)
    total = mass[first] + mass[second]
    if total <= 0:
        return None
    return mass[first] / total


_ANSWER_RE = re.compile(r"answer\s*(?:is)?\s*[:\-]?\s*[\(\[*\s]*\b(A|B)\b", re.IGNORECASE)
# a bare leading letter ("A", "(B).", "A\n...", "B is better"), not an article ("A lot ...")
_LEADING_RE = re.compile(r"^[\s(\[*\"']*(A|B)(?=$|[ \t]*\n|[).\]*:,]|\s+(?:is|because)\b)")
_RESPONSE_RE = re.compile(r"\b(?:response|option)\s*[\(\[]?\s*(A|B)\b", re.IGNORECASE)


def parse_ab(text: str) -> str | None:
    """ "A" or "B" from free text ("Answer: (B)", "A.", "Response A is better"), else None."""
    matches = _ANSWER_RE.findall(text)
    if matches:
        return matches[-1].upper()
    leading = _LEADING_RE.match(text)
    if leading:
        return leading.group(1)
    named = {m.upper() for m in _RESPONSE_RE.findall(text)}
    if len(named) == 1:
        return named.pop()
    return None


def parse_yes_no(text: str) -> bool | None:
    words = re.findall(r"[A-Za-z]+", text)
    if not words:
        return None
    first = words[0].casefold()
    if first in ("yes", "no"):
        return first == "yes"
    return None


def parse_score(text: str, low: int, high: int) -> int | None:
    """An integer in [low, high] from JSON ({"score": n}) or the first number in the text."""
    try:
        data = json.loads(text)
        if isinstance(data, dict) and "score" in data:
            value = int(data["score"])
            return value if low <= value <= high else None
    except (ValueError, TypeError):
        pass
    for match in re.findall(r"-?\d+(?:\.\d+)?", text):
        number = float(match)
        if number.is_integer() and low <= number <= high:
            return int(number)
        return None  # the first number is the answer; out of range means unparseable
    return None


def score_distribution(completion: Completion, low: int, high: int) -> dict[int, float] | None:
    """Normalised distribution over the scale's values from the first answer tokens' log-probs.

    Handles values a tokenizer splits into digits ("10" -> "1", "0"): when the generated first
    token is "1", the second position's p("0") splits the "1" mass between 1 and 10. When the
    first token is something else, "1"-mass counts as 1 (the split is unknowable).
    """
    tokens = completion.logprobs or []
    if not tokens:
        return None
    values = [str(v) for v in range(low, high + 1)]
    first = dict(tokens[0].top)
    first.setdefault(tokens[0].token, tokens[0].logprob)
    probs: dict[int, float] = {v: 0.0 for v in range(low, high + 1)}
    for token, logprob in first.items():
        core = token.strip(_STRIP)
        if core in values:
            probs[int(core)] += math.exp(logprob)
    generated = tokens[0].token.strip(_STRIP)
    if len(tokens) > 1 and generated in values:
        longer = [v for v in values if v != generated and v.startswith(generated)]
        if longer:
            second = dict(tokens[1].top)
            second.setdefault(tokens[1].token, tokens[1].logprob)
            split = {v: 0.0 for v in longer}
            for token, logprob in second.items():
                rest = generated + token.strip(_STRIP)
                if rest in split:
                    split[rest] += math.exp(logprob)
            base = probs[int(generated)]
            cont = min(1.0, sum(split.values()))
            probs[int(generated)] = base * (1 - cont)
            for v, p in split.items():
                probs[int(v)] += base * p
    total = sum(probs.values())
    if total <= 0:
        return None
    return {v: p / total for v, p in probs.items()}
