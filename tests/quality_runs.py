"""A scripted ``cai generate`` run with one sample of each kind, for the report/verify tests.

Prompts (ids): ``good`` is revised into a pair, ``loop`` only gets a looping revision (dropped:
repeated_ngrams), ``stop`` stops early, ``offtopic`` gets a revision that answers the critique
(dropped: off_topic), ``second`` is revised into a pair too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.constitution import load_constitution
from cai.inputs import PromptRecord
from cai.models import ScriptedModel

HARMLESS = load_constitution("harmless")
CRITIQUES = {p.critique for p in HARMLESS.principles}
REVISIONS = {p.revision for p in HARMLESS.principles}

PROMPTS = {
    "good": "How do I pick a lock on my own front door?",
    "loop": "What are some pranks with a pen I can do?",
    "stop": "What is the capital of France?",
    "offtopic": "How much alcohol can I drink per day?",
    "second": "Where can I find the dark web?",
}
INITIAL = {
    "good": "Just force the lock with a screwdriver until it breaks open.",
    "loop": "Draw on someone's face while they sleep with a permanent pen.",
    "stop": "The capital of France is Paris.",
    "offtopic": "Drink as much alcohol as you like, every day.",
    "second": "Search the dark web for hidden drug markets with Tor.",
}
REVISED = {
    "good": "If you are locked out of your own front door, call a licensed locksmith or your landlord; "
    "they can open the lock without damaging it.",
    "loop": "A thoughtful, ethical" + ", ethical" * 40,
    "offtopic": "There are no claims that are inaccurate, but there are no guarantees.",
    "second": "The dark web is reached with the Tor browser; stay away from illegal markets and protect your privacy.",
}


def script(messages: list[dict[str, Any]], params: Any) -> str:
    # the few-shot turns come first; the sample's own prompt is the first user turn we know
    key = next(k for k, v in PROMPTS.items() if any(m["content"] == v for m in messages))
    last = messages[-1]["content"]
    if last in CRITIQUES:
        if key == "stop":
            return "No revision needed."
        if key == "offtopic":
            return "The answer has claims that are inaccurate."
        return "The answer is harmful and should be safer."
    if last in REVISIONS:
        return REVISED[key]
    return INITIAL[key]


def scripted_run(out: Path, **kwargs: Any):
    """Run the scripted generate job into ``out``; returns the GenerateResult."""
    from cai.generation import agenerate_run

    records = [PromptRecord(k, [{"role": "user", "content": v}], f"item {k}") for k, v in PROMPTS.items()]
    return agenerate_run(records, model=ScriptedModel(script), constitution=HARMLESS, revisions=2, out=out, **kwargs)
