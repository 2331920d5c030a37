"""Quality gates for revisions: cheap, model-free checks that a revision is usable data.

A revision that fails a gate never replaces the current answer (``revise`` rolls the round
back, as for the other degenerate revisions), so it never becomes a ``chosen`` text. Each gate
has a plain reason name, counted in the trace (``Step.note = "degenerate:<reason>"``), the run
summary and ``report.json``:

- ``repeated_ngrams``: a large share of the word n-grams are repeats ("ethical, ethical, ...");
- ``repeated_sentence``: the same sentence appears more than ``max_sentence_repeats`` times;
- ``repeated_span``: a run of ``repeated_span_words`` words appears twice, the start of a loop
  the share-based gates do not see yet (a revision cut at ``max_tokens`` mid-loop);
- ``low_compression``: the text compresses far better than prose does (a loop of any shape);
- ``truncated``: the model stopped at ``max_tokens`` (``finish_reason == "length"``); dropped
  with ``on_truncated="drop"``, else kept and flagged (``Step.note = "truncated"``);
- ``wrong_language``: the revision is written in another script than the prompt (or, for a
  prompt without letters, than the constitution's language);
- ``off_topic``: a short revision that shares no content word with the prompt or the answer
  it revises, but talks in the critique's words ("There are no claims that are inaccurate").
  Whether a revision *better* answers the prompt is the judge's call (``--verify``);
- ``describes_itself``: the revision talks about itself instead of (or besides) answering
  ("This is a thoughtful, ethical response that ...", "This revised response avoids ...").
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from cai.refusal import RefusalRule

OnTruncated = Literal["drop", "keep"]
GATE_REASONS = (
    "repeated_ngrams",
    "repeated_sentence",
    "repeated_span",
    "low_compression",
    "truncated",
    "wrong_language",
    "off_topic",
    "describes_itself",
)

# the script a constitution's language is written in (ISO 639-1 code -> Unicode name prefix)
LANGUAGE_SCRIPTS = {
    "ko": {"HANGUL"},
    "ja": {"HIRAGANA", "KATAKANA", "CJK"},
    "zh": {"CJK"},
    "ru": {"CYRILLIC"},
    "uk": {"CYRILLIC"},
    "ar": {"ARABIC"},
    "he": {"HEBREW"},
    "hi": {"DEVANAGARI"},
    "th": {"THAI"},
    "el": {"GREEK"},
}
_CJK_SCRIPTS = {"HANGUL", "CJK", "HIRAGANA", "KATAKANA"}
_STOPWORDS = frozenset(
    "about above after again also an and another any are because been before being below between both "
    "but can cannot could did does doing down during each every few from further have having here "
    "into just like made make many more most much must need never only other ought over please "
    "really same should some such than that their them then there these they thing things this "
    "those through under until very want were what when where which while will with within without "
    "would your yours you're i'm it's that's there's here's don't can't won't isn't aren't".split()
)
# short refusals answer the prompt (by declining): the off_topic gate leaves them alone
_REFUSAL = RefusalRule()
_VERBS = "is|was|paints|provides|addresses|maintains|avoids|removes|remains|acknowledges|emphasi[sz]es|highlights|promotes|encourages|respects|offers|reflects|demonstrates"
_DESCRIBES_ITSELF = re.compile(
    rf"\bthis (?:revised |rewritten |new |updated )?(?:response|answer|revision|reply) (?:{_VERBS})\b"
    r"|\bthis is an? (?:\w+,? ){0,3}(?:response|revision|reply)\b"
    r"|\bthe (?:revised|rewritten|updated) (?:response|answer|revision|reply)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


@dataclass(frozen=True)
class QualityGates:
    """Thresholds of the gates; ``None`` (or ``False``) turns a gate off."""

    ngram: int = 3  # word n-gram size of the repetition gate
    max_repeated_ngrams: float | None = 0.35  # share of n-grams that repeat an earlier one
    max_sentence_repeats: int | None = 1  # times a sentence may appear again
    repeated_span_words: int | None = 10  # a run of this many words may not appear twice
    min_compression_ratio: float | None = 0.25  # zlib bytes / utf-8 bytes, for texts >= 200 bytes
    on_truncated: OnTruncated = "keep"
    language: bool = True
    off_topic: bool = True
    describes_itself: bool = True
    min_words: int = 12  # texts shorter than this are not judged by the repetition gates

    def __post_init__(self) -> None:
        if self.on_truncated not in ("drop", "keep"):
            raise ValueError(f"on_truncated must be drop or keep, got {self.on_truncated!r}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if self.repeated_span_words is not None and self.repeated_span_words < 2:
            raise ValueError(f"repeated_span_words must be >= 2, got {self.repeated_span_words}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def off(cls) -> QualityGates:
        return cls(
            max_repeated_ngrams=None,
            max_sentence_repeats=None,
            repeated_span_words=None,
            min_compression_ratio=None,
            language=False,
            off_topic=False,
            describes_itself=False,
        )


def words(text: str) -> list[str]:
    return re.findall(r"\w+(?:'\w+)?", text.lower())


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    tokens = words(text)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the word n-grams that already occurred earlier in the text (0 for short texts)."""
    grams = word_ngrams(text, n)
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def repeated_span(text: str, n: int) -> str | None:
    """The first run of ``n`` words that appears again later in the text (lower-cased), or None."""
    seen: set[tuple[str, ...]] = set()
    for gram in word_ngrams(text, n):
        if gram in seen:
            return " ".join(gram)
        seen.add(gram)
    return None


def sentence_repeats(text: str, min_words: int = 4) -> int:
    """How many times the most repeated sentence (of >= ``min_words`` words) appears again."""
    sentences = [" ".join(words(s)) for s in _SENTENCE_END.split(text)]
    counts = Counter(s for s in sentences if len(s.split()) >= min_words)
    return max(counts.values(), default=1) - 1


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, 9)) / len(raw) if raw else 1.0


def script_counts(text: str) -> Counter[str]:
    """Letters per Unicode script ("LATIN", "HANGUL", "CJK", ...)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            counts[name.split(" ")[0] if name else "OTHER"] += 1
    return counts


def dominant_script(text: str, min_letters: int = 8) -> str | None:
    counts = script_counts(text)
    if sum(counts.values()) < min_letters:
        return None
    return counts.most_common(1)[0][0]


def expected_scripts(prompt_text: str, language: str = "en") -> set[str]:
    """The scripts a reply to this prompt should be in: the prompt's, else the language's."""
    script = dominant_script(prompt_text)
    if script is None:
        return LANGUAGE_SCRIPTS.get(language.split("-")[0].lower(), {"LATIN"})
    return {"HIRAGANA", "KATAKANA", "CJK"} if script in {"HIRAGANA", "KATAKANA"} else {script}


def in_language(text: str, scripts: set[str], min_share: float = 0.25) -> bool:
    """At least ``min_share`` of the letters are in ``scripts`` (one Hangul or Han letter counts
    as three Latin ones, so Korean with English terms in it still passes)."""
    counts = script_counts(text)
    weight = {s: c * (3 if s in _CJK_SCRIPTS else 1) for s, c in counts.items()}
    total = sum(weight.values())
    if sum(counts.values()) < 8 or total == 0:
        return True
    return sum(w for s, w in weight.items() if s in scripts) / total >= min_share


_SUFFIXES = ("ing", "ed", "es", "s", "ly")  # longest first


def _stem(token: str) -> str:
    """``token`` less one common English suffix, keeping 3 letters ("locked" -> "lock")."""
    for suffix in _SUFFIXES:
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            return token[: -len(suffix)]
    return token


def content_keys(text: str) -> set[str]:
    """Crude content-word keys: 5-letter prefixes of longer non-stopwords less a common suffix
    (so "lock" and "locked" share one), and character bigrams of Hangul/Han runs (words there
    carry attached particles)."""
    keys: set[str] = set()
    for token in words(text):
        if any(unicodedata.name(ch, "").split(" ")[0] in _CJK_SCRIPTS for ch in token):
            keys.update(token[i : i + 2] for i in range(len(token) - 1))
        elif len(token) >= 4 and token not in _STOPWORDS and not token.isdigit():
            keys.add(_stem(token)[:5])
    return keys


def is_off_topic(revision: str, *, prompt_text: str, answer: str, critique_text: str, max_words: int = 40) -> bool:
    """A short revision that shares no content word with the prompt or the answer it revises
    while it does share some with the critique (it answers the critique, not the user)."""
    if len(words(revision)) > max_words or _REFUSAL.is_refusal(revision):
        return False
    keys = content_keys(revision)
    if not keys or keys & (content_keys(prompt_text) | content_keys(answer)):
        return False
    return bool(keys & content_keys(critique_text))


def gate_reason(
    revision: str,
    gates: QualityGates,
    *,
    finish_reason: str = "stop",
    prompt_text: str = "",
    answer: str = "",
    critique_text: str = "",
    language: str = "en",
) -> str | None:
    """The first gate ``revision`` fails (a name from ``GATE_REASONS``), or None."""
    long_enough = len(words(revision)) >= gates.min_words
    if gates.max_sentence_repeats is not None and sentence_repeats(revision) > gates.max_sentence_repeats:
        return "repeated_sentence"
    if long_enough and gates.max_repeated_ngrams is not None:
        if repeated_ngram_share(revision, gates.ngram) > gates.max_repeated_ngrams:
            return "repeated_ngrams"
    if gates.repeated_span_words is not None and repeated_span(revision, gates.repeated_span_words):
        return "repeated_span"
    if long_enough and gates.min_compression_ratio is not None and len(revision.encode()) >= 200:
        if compression_ratio(revision) < gates.min_compression_ratio:
            return "low_compression"
    if gates.language and not in_language(revision, expected_scripts(prompt_text, language)):
        return "wrong_language"
    if gates.describes_itself and _DESCRIBES_ITSELF.search(revision):
        return "describes_itself"
    if gates.off_topic and is_off_topic(revision, prompt_text=prompt_text, answer=answer, critique_text=critique_text):
        return "off_topic"
    if finish_reason == "length" and gates.on_truncated == "drop":
        return "truncated"
    return None


def prompt_text(messages: Sequence[dict[str, Any]]) -> str:
    """The text of the last user turn."""
    return next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")


def parse_gates(settings: Sequence[str] = (), *, on_truncated: str | None = None, off: bool = False) -> QualityGates:
    """``QualityGates`` from ``NAME=VALUE`` strings (the ``--gate`` flag), e.g.
    ``max_repeated_ngrams=0.5``, ``off_topic=false``, ``min_compression_ratio=none``."""
    base = QualityGates.off() if off else QualityGates()
    values: dict[str, Any] = base.to_dict()
    for setting in settings:
        name, sep, raw = setting.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in values or name == "on_truncated":
            known = ", ".join(k for k in values if k != "on_truncated")
            raise ValueError(f"--gate {setting!r}: expected NAME=VALUE with NAME one of {known}")
        raw = raw.strip().lower()
        try:
            if raw in ("none", "off"):
                if isinstance(base.to_dict()[name], bool) or name in ("ngram", "min_words"):
                    raise ValueError
                values[name] = None
            elif isinstance(base.to_dict()[name], bool):
                if raw not in ("true", "false", "on", "yes", "no"):
                    raise ValueError
                values[name] = raw in ("true", "on", "yes")
            elif name in ("ngram", "min_words", "max_sentence_repeats", "repeated_span_words"):
                values[name] = int(raw)
            else:
                values[name] = float(raw)
        except ValueError:
            raise ValueError(f"--gate {setting!r}: bad value for {name}") from None
    if on_truncated is not None:
        values["on_truncated"] = on_truncated
    try:
        return QualityGates(**values)
    except ValueError as exc:  # a value out of range ("ngram must be >= 1"): name the flag
        raise ValueError(f"--gate: {exc}") from None
