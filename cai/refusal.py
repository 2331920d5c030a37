"""The one refusal rule: does a response open as a refusal? Model-free, multilingual.

The quality gates (``cai.quality``), ``cai stats`` and the judge ``rules:refusal``
(``judges.rules.RefusalJudge``) all read refusals through ``RefusalRule``.
"""

from __future__ import annotations

import re

#: refusal openers by language; matched case-insensitively near the start of a response
REFUSAL_PATTERNS: dict[str, tuple[str, ...]] = {
    "en": (
        r"\bI(?:'m| am) sorry,? but\b",
        r"\bI(?: can ?not| can't| cannot| won't| will not|(?:'m| am) unable to|(?:'m| am) not able to)"
        r" (?:help|assist|provide|do|comply|fulfil|fulfill|support|give|share|answer|create|write|generate)",
        r"\bI (?:must|have to) (?:decline|refuse)\b",
        r"\bas an AI(?: language model)?,? I(?:'m not| (?:can't|cannot|can not|won't|am not|don't))\b",
        r"\bI(?:'m| am) not (?:comfortable|going to)\b",
        r"\b(?:sorry|apologi[sz]e),? (?:but )?I (?:can't|cannot|won't)\b",
        # an apology followed by what the assistant is, or is not ("I'm sorry, I'm not a human")
        r"\b(?:sorry|apologi[sz]e),? (?:but )?I(?:'m| am) (?:not (?:a |an )?(?:human|person|real person)"
        r"|(?:just |only )?an? (?:AI|artificial intelligence|language model|virtual assistant|chatbot))\b",
    ),
    "ko": (
        r"죄송(?:합니다|하지만|하지만요|해요)",
        r"(?:도와|도움을 )?드릴 수 없",
        r"(?:제공|답변|안내|지원|도움)(?:을|를)?\s*(?:해\s*)?(?:드릴|할)\s*수\s*(?:가\s*)?없",
        r"할 수 없습니다",
        r"(?:응답|답변)하기 어렵습니다",
        r"거절(?:하겠|합니다)",
    ),
    "ja": (r"申し訳(?:ありません|ございません)", r"(?:お手伝い|お答え|提供)(?:することは)?できません"),
    "zh": (r"(?:抱歉|对不起)", r"我(?:不能|无法)(?:帮助|提供|协助|回答)"),
    "es": (r"\blo siento\b", r"\bno puedo (?:ayudar|proporcionar|hacer)"),
    "fr": (r"\bd[ée]sol[ée]e?\b", r"\bje ne peux pas\b"),
    "de": (r"\bes tut mir leid\b", r"\bich kann (?:dir |Ihnen )?(?:nicht|dabei nicht)\b"),
}

#: typographic apostrophes, read as "'" so that "I’m sorry" matches as "I'm sorry" does
_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'"})


class RefusalRule:
    """Matches a refusal opener (any of ``languages``, plus ``extra`` patterns) in the first
    ``window`` characters, so a helpful answer that mentions "I can't" deep inside is not a
    refusal."""

    def __init__(self, *, languages: tuple[str, ...] | None = None, window: int = 300, extra: tuple[str, ...] = ()):
        langs = languages or tuple(REFUSAL_PATTERNS)
        unknown = [lang for lang in langs if lang not in REFUSAL_PATTERNS]
        if unknown:
            raise ValueError(f"no refusal patterns for {unknown}; known: {sorted(REFUSAL_PATTERNS)}")
        patterns = [p for lang in langs for p in REFUSAL_PATTERNS[lang]] + list(extra)
        self.regex = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
        self.window = window

    def match(self, text: str) -> re.Match[str] | None:
        return self.regex.search(text.strip()[: self.window].translate(_APOSTROPHES))

    def is_refusal(self, text: str) -> bool:
        return self.match(text) is not None
