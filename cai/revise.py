"""The critique-revise algorithm (SL-CAI) for one sample.

One conversation grows call by call so that server prefix caches hit::

    [system?] [few-shot turns] prompt turns -> answer
        + critique request (principle 1) -> critique + revision request -> revision
        + critique request (principle 2) -> ...

The initial answer is generated from the prompt alone (it is the model's own, unsteered
answer: the ``rejected`` side of the preference pair); the critique/revision calls see the
few-shot examples first, which are identical for every sample and so are a shared prefix.

Rules: a critique saying no revision is needed stops the loop and the previous answer stands;
a revision that is empty, a copy of the critique, the request echoed back, or a stop phrase
never replaces the current answer (that round is rolled back out of the conversation, so the
next round critiques the current answer again). The same holds for a revision failing a
quality gate (``cai.quality``: loops, truncation, wrong language, off topic).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cai.constitution import Constitution, Principle, Sampling, load_constitution
from cai.models.base import ChatModel, Completion, ContextLengthError, GenParams, Message, ModelError, Usage
from cai.quality import QualityGates, gate_reason, prompt_text
from cai.records import Step, Trace, check_messages, message
from cai.revise_config import ReviseConfig

# always recognised, whatever the constitution lists
BUILTIN_STOP_PATTERNS = [
    r"\bno (further |more )?(revisions?|changes?|edits?|critiques?) (is |are )?(needed|necessary|required)\b",
    r"\b(does not|doesn't|do not|don't) (need|require) (any )?(revisions?|changes?|to be (revised|changed))\b",
    r"\bnothing (needs to be |to )?(revise|revised|change|changed|fix|fixed)\b",
    r"\bthere (is|are) no (problems?|issues?) (with|in) (my|the) (last |previous )?(answer|response)\b",
]
_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:here(?:'s| is) (?:the |my )?)?(?:revised|rewritten|new|improved)?\s*"
    r"(?:revision|response|answer|rewrite)\s*(?:\*\*)?\s*[:\-]\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)


_MARKUP = re.compile(r"[*_`#>\"]+")
_SPACE = re.compile(r"\s+")
_STOP = re.compile("|".join(f"(?:{p})" for p in BUILTIN_STOP_PATTERNS))


@functools.lru_cache(maxsize=4096)  # the same requests, examples and stop phrases come back every call
def _norm(text: str) -> str:
    text = text.lower().replace("’", "'")
    return _SPACE.sub(" ", _MARKUP.sub(" ", text)).strip()


def _similar(a: str, b: str, threshold: float) -> bool:
    a, b = _norm(a), _norm(b)
    if not a or not b:
        return False
    if a == b:
        return True
    if 2 * min(len(a), len(b)) < threshold * (len(a) + len(b)):
        return False  # the lengths alone bound the ratio below the threshold
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return matcher.quick_ratio() >= threshold and matcher.ratio() >= threshold


def says_no_revision_needed(text: str, stop_phrases: Sequence[str] = ()) -> bool:
    """True when a critique (or any text) says the answer needs no revision."""
    norm = _norm(text)
    if not norm:
        return False
    for phrase in stop_phrases:
        p = _norm(phrase).rstrip(".!")
        if p and p in norm:
            return True
    return _STOP.search(norm) is not None


def clean_revision(text: str) -> str:
    """Strip a leading 'Revision:'-style label and wrapping quotes small models add."""
    text = _LABEL.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _echoes(reply: str, request: str) -> bool:
    """The reply is the request repeated (whole, or quoted inside the reply)."""
    norm_request = _norm(request)
    return _similar(reply, request, 0.8) or (len(norm_request) > 20 and norm_request in _norm(reply))


def is_stop_phrase_answer(text: str, stop_phrases: Sequence[str] = ()) -> bool:
    """The text is essentially just a "no revision needed" verdict, not an answer. (A real
    answer may mention e.g. "nothing to fix" in passing; that does not make it a verdict.)"""
    return len(_norm(text).split()) <= 12 and says_no_revision_needed(text, stop_phrases)


def degenerate_reason(
    revision: str,
    *,
    critique: str,
    request: str,
    stop_phrases: Sequence[str] = (),
    examples: Sequence[str] = (),
) -> str | None:
    """Why a revision must not replace the current answer, or None when it is usable.
    ``examples`` are the few-shot texts, which small models tend to copy verbatim."""
    if not _norm(revision):
        return "empty"
    if says_no_revision_needed(revision, stop_phrases):
        return "stop_phrase"
    if _similar(revision, critique, 0.9):
        return "copy_of_critique"
    if _echoes(revision, request):
        return "request_echoed"
    if any(_similar(revision, example, 0.8) for example in examples):
        return "copy_of_example"
    return None


def pick_principles(
    constitution: Constitution,
    sampling: Sampling,
    revisions: int,
    *,
    seed: int,
    key: str,
) -> list[Principle]:
    """The principle for each round. ``all`` applies every principle once (``revisions`` is
    ignored); ``sequential`` cycles in order; ``random`` draws without replacement until the
    list is used up, seeded by (seed, key) so each sample gets its own reproducible draw."""
    principles = list(constitution.principles)
    if sampling == "all":
        return principles
    if sampling == "sequential":
        return [principles[i % len(principles)] for i in range(revisions)]
    rng = random.Random(f"{seed}:{key}")
    order: list[Principle] = []
    while len(order) < revisions:
        order += rng.sample(principles, len(principles))
    return order[:revisions]


def normalize_prompt(prompt: str | Sequence[Message]) -> list[Message]:
    """A prompt string or conversation as plain messages ending with a user turn (ValueError if not)."""
    if isinstance(prompt, str):
        return [message("user", prompt)]
    return check_messages(list(prompt), "prompt", last_role="user")


def _with_few_shot(prompt: list[Message], constitution: Constitution, few_shot: bool) -> list[Message]:
    if not few_shot or not constitution.few_shot:
        return list(prompt)
    system = [m for m in prompt[:1] if m["role"] == "system"]
    shots = [m for example in constitution.few_shot for m in example.to_messages()]
    return [*system, *shots, *prompt[len(system) :]]


@dataclass
class _Reply:
    text: str  # stripped
    finish_reason: str
    usage: Usage  # this one call (calls=1)
    seconds: float


@dataclass
class _Conversation:
    model: ChatModel
    params: GenParams

    def fit(self, messages: list[Message]) -> GenParams:
        """Params that fit the model context; ContextLengthError when the prompt alone does not."""
        ctx = self.model.capabilities.max_context
        n = self.model.count_tokens(messages) if ctx else None
        if ctx is None or n is None:
            return self.params
        if n >= ctx - 1:
            raise ContextLengthError(f"prompt is {n} tokens; the model's context is {ctx}")
        if n + self.params.max_tokens > ctx:
            return self.params.replace(max_tokens=ctx - n)
        return self.params

    async def say(self, messages: list[Message]) -> _Reply:
        params = self.fit(messages)
        start = time.perf_counter()
        completion = await self.model.chat(messages, params)
        usage = Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens, 1)
        return _Reply(completion.text.strip(), completion.finish_reason, usage, time.perf_counter() - start)


def _prompt_key(messages: list[Message]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


async def _initial(trace: Trace, conv: _Conversation, initial: str | Completion | None) -> None:
    """Set the trace's initial answer: the one given, or the model's reply to the prompt alone."""
    if initial is None:
        reply = await conv.say(trace.prompt)
        trace.initial, trace.initial_usage, trace.initial_seconds = reply.text, reply.usage, reply.seconds
        finish = reply.finish_reason
    elif isinstance(initial, Completion):
        trace.initial, trace.initial_usage, finish = initial.text.strip(), initial.usage, initial.finish_reason
    else:
        trace.initial, finish = initial.strip(), "stop"
    if finish == "length":
        trace.metadata["initial_truncated"] = True


def _fail(trace: Trace, exc: ModelError) -> None:
    trace.stop_reason, trace.error = "failed", exc.reason
    trace.metadata["error_message"] = str(exc)


async def revise(
    model: ChatModel,
    prompt: str | Sequence[Message],
    constitution: Constitution | str = "harmless",
    config: ReviseConfig | None = None,
    *,
    initial: str | Completion | None = None,
    sample_id: str | None = None,
    revisions: int | None = None,
    sampling: Sampling | None = None,
    seed: int | None = None,
    few_shot: bool | None = None,
    params: GenParams | None = None,
    gates: QualityGates | None = None,
) -> Trace:
    """Critique and revise one prompt's answer.

    ``config``: the loop's settings (``ReviseConfig``; default: the constitution's defaults).
    The keyword options ``revisions`` ... ``gates`` are the older spelling of the same
    settings (``None`` takes the default); pass either them or ``config``.
    ``initial``: the answer to revise, instead of generating one from the prompt (a
    Completion's usage is recorded as the trace's ``initial_usage``; its ``finish_reason
    == "length"`` marks ``initial_truncated``). Model errors do not raise: the trace comes
    back with ``stop_reason="failed"`` and ``error`` set to the reason (e.g. ``context_length``).
    Each step records its calls' usage and seconds; ``trace.usage`` is their sum."""
    constitution = load_constitution(constitution)
    config = ReviseConfig.resolve(
        constitution,
        config,
        revisions=revisions,
        sampling=sampling,
        seed=seed,
        few_shot=few_shot,
        params=params,
        gates=gates,
    )
    messages = normalize_prompt(prompt)
    key = sample_id or _prompt_key(messages)
    trace = Trace(
        id=key,
        prompt=messages,
        model=model.spec,
        constitution=constitution.id,
        metadata=config.metadata(),
    )
    conv = _Conversation(model, config.params)
    try:
        await _initial(trace, conv, initial)
    except ModelError as exc:
        _fail(trace, exc)
        trace.usage = trace.initial_usage
        return trace
    current = await _loop(trace, conv, constitution, config, key)
    trace.usage = sum((s.critique_usage + s.revision_usage for s in trace.steps), trace.initial_usage)
    if trace.stop_reason != "failed":
        trace.final = current
        if not _norm(current):
            trace.stop_reason, trace.error = "failed", "empty_answer"
        elif is_stop_phrase_answer(current, config.stop_phrases):
            trace.stop_reason, trace.error = "failed", "stop_phrase_answer"
    return trace


async def _loop(trace: Trace, conv: _Conversation, constitution: Constitution, config: ReviseConfig, key: str) -> str:
    """Run the rounds on ``trace`` (steps and stop reason); the answer that stands at the end."""
    current = trace.initial
    messages = trace.prompt
    stop_phrases = config.stop_phrases
    examples = [e.revision for e in constitution.few_shot] + [e.critique for e in constitution.few_shot]
    history = [*_with_few_shot(messages, constitution, config.few_shot), {"role": "assistant", "content": current}]
    trace.stop_reason = "completed"
    for principle in pick_principles(constitution, config.sampling, config.revisions, seed=config.seed, key=key):
        step = Step(principle=principle.name, critique_request=principle.critique, critique="")
        trace.steps.append(step)
        finish = "stop"
        try:
            ask = [*history, {"role": "user", "content": principle.critique}]
            reply = await conv.say(ask)
            step.critique, step.critique_usage, step.critique_seconds = reply.text, reply.usage, reply.seconds
            if _echoes(step.critique, principle.critique):
                # the request (which quotes the stop phrase) parroted back is no verdict
                step.note = "degenerate_critique:request_echoed"
                continue
            if says_no_revision_needed(step.critique, stop_phrases):
                step.note = "no_revision_needed"
                trace.stop_reason = "early_stop"
                break
            step.revision_request = principle.revision
            ask = [
                *ask,
                {"role": "assistant", "content": step.critique},
                {"role": "user", "content": principle.revision},
            ]
            reply = await conv.say(ask)
            step.revision_usage, step.revision_seconds = reply.usage, reply.seconds
            step.revision, finish = clean_revision(reply.text), reply.finish_reason
        except ContextLengthError:
            step.note = "context_full"
            trace.stop_reason = "context_full"
            break
        except ModelError as exc:
            _fail(trace, exc)
            break
        bad = degenerate_reason(
            step.revision,
            critique=step.critique,
            request=principle.revision,
            stop_phrases=stop_phrases,
            examples=examples,
        ) or gate_reason(
            step.revision,
            config.gates,
            finish_reason=finish,
            prompt_text=prompt_text(messages),
            answer=current,
            critique_text=f"{principle.critique}\n{step.critique}\n{principle.revision}",
            language=constitution.language,
        )
        if bad:
            step.note = f"degenerate:{bad}"  # roll back: the next round critiques `current` again
        else:
            step.accepted = step.revision != current
            step.note = "" if step.accepted else "unchanged"
            if step.accepted and finish == "length":
                step.note = "truncated"  # kept (on_truncated="keep") but flagged
            current = step.revision
            history = [*ask, {"role": "assistant", "content": current}]
    return current
