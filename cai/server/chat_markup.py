"""Chat-templated text back into a conversation, for judges.

OpenRLHF's remote reward ``query`` is the chat-templated prompt plus the response, decoded
with special tokens (``<|im_start|>user\\n...<|im_end|>``). A judge shown those tokens scores
the markup, not the conversation, so the text is split back into turns: with a tokenizer's own
chat template where one is configured, else with the common template markers below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cai.models.base import Message


@dataclass(frozen=True)
class Markup:
    """How one chat template marks turns: a turn starts at a ``header`` (group ``role``) and runs
    to an ``end`` marker or the next header; ``special`` tokens (BOS/EOS) are dropped anywhere."""

    name: str
    header: re.Pattern
    end: tuple[str, ...]
    special: tuple[str, ...] = ()
    roles: dict[str, str] = field(default_factory=dict)  # template role name -> chat role
    preamble: str = ""  # text the template puts before every conversation (a default system turn)


def _markup(name: str, header: str, end: tuple[str, ...], special: tuple[str, ...] = (), **roles: str) -> Markup:
    return Markup(name, re.compile(header), end, special, {k.replace("_", " "): v for k, v in roles.items()})


COMMON_MARKUPS: tuple[Markup, ...] = (
    # ChatML: Qwen, SmolLM/SmolLM2/SmolLM3, Hermes, ...
    _markup("chatml", r"<\|im_start\|>(?P<role>[a-z_]+)\n?", ("<|im_end|>",), ("<|endoftext|>",)),
    _markup(
        "llama3",
        r"<\|start_header_id\|>(?P<role>[a-z_]+)<\|end_header_id\|>\n*",
        ("<|eot_id|>", "<|eom_id|>"),
        ("<|begin_of_text|>", "<|end_of_text|>"),
    ),
    _markup("gemma", r"<start_of_turn>(?P<role>[a-z_]+)\n", ("<end_of_turn>",), ("<bos>", "<eos>"), model="assistant"),
    _markup("phi3/zephyr", r"<\|(?P<role>system|user|assistant)\|>\n?", ("<|end|>", "</s>"), ("<s>", "<|endoftext|>")),
)
# Llama 2 / Mistral: "<s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] answer</s>"
INST = Markup(
    "llama2/mistral",
    re.compile(r"(?P<role>\[INST\]|\[/INST\])"),
    ("</s>",),
    ("<s>",),
    {"[INST]": "user", "[/INST]": "assistant"},
)
_SYS = re.compile(r"^\s*<<SYS>>\n?(?P<system>.*?)\n?<</SYS>>\s*", re.S)


def _clean(text: str, markup: Markup) -> str:
    for token in markup.special:
        text = text.replace(token, "")
    return text.strip()


def parse_turns(text: str, markup: Markup) -> list[Message] | None:
    """The turns of ``text`` under ``markup``, or None when it holds none of its headers."""
    if markup.preamble and text.startswith(markup.preamble):
        text = text[len(markup.preamble) :]
    heads = list(markup.header.finditer(text))
    if not heads:
        return None
    turns: list[Message] = []
    for head, nxt in zip(heads, heads[1:] + [None]):
        body = text[head.end() : nxt.start() if nxt is not None else len(text)]
        cut = min((i for i in (body.find(e) for e in markup.end) if i >= 0), default=len(body))
        role = head.group("role")
        turns.append({"role": markup.roles.get(role, role), "content": _clean(body[:cut], markup)})
    if markup is INST and turns and turns[0]["role"] == "user":
        sys_match = _SYS.match(turns[0]["content"])
        if sys_match:
            turns[0]["content"] = turns[0]["content"][sys_match.end() :]
            turns.insert(0, {"role": "system", "content": sys_match.group("system").strip()})
    return turns


def split_query(query: str, prompt: str | None = None, markup: Markup | None = None) -> tuple[Any, str]:
    """(prompt, response) from OpenRLHF's ``query`` (templated prompt + response).

    The prompt comes back as a conversation when the markup is recognised (the last assistant
    turn is the response), else as text with the special tokens removed (``prompt``, when given
    and a prefix of ``query``, marks where the response starts)."""
    for candidate in (markup,) if markup is not None else (*COMMON_MARKUPS, INST):
        turns = parse_turns(query, candidate)
        if turns:
            if turns[-1]["role"] == "assistant":
                return turns[:-1], turns[-1]["content"]
            return turns, ""  # the policy produced nothing after the generation header
    specials = (
        tuple(t for m in (*COMMON_MARKUPS, INST) for t in (*m.special, *m.end))
        if markup is None
        else (*markup.special, *markup.end)
    )
    plain = Markup("plain", re.compile(r"(?!)"), (), specials)
    if prompt and query.startswith(prompt):
        return _clean(prompt, plain), _clean(query[len(prompt) :], plain)
    return _clean(prompt or "", plain), _clean(query, plain)


def markup_from_tokenizer(tokenizer: Any) -> Markup:
    """A ``Markup`` read off a HF tokenizer's chat template by rendering marked conversations."""
    u1, a1, u2, s1 = "\x01", "\x02", "\x03", "\x04"

    def render(messages: list[Message], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    try:
        talk = render(
            [{"role": "user", "content": u1}, {"role": "assistant", "content": a1}, {"role": "user", "content": u2}]
        )
        asking = render([{"role": "user", "content": u1}], generation=True)
    except Exception as exc:  # a template that rejects plain user/assistant turns
        raise ValueError(f"cannot read the tokenizer's chat template: {exc}") from exc
    user_end = talk[talk.index(u2) + 1 :]
    between_ua = talk[talk.index(u1) + 1 : talk.index(a1)]
    between_au = talk[talk.index(a1) + 1 : talk.index(u2)]
    if not (user_end.strip() and between_ua.startswith(user_end) and between_au.startswith(user_end)):
        raise ValueError(
            "the tokenizer's chat template has no turn-end marker cai can read; "
            "leave judge.tokenizer unset to use the common template markers"
        )
    headers = {
        between_au[len(user_end) :]: "user",
        between_ua[len(user_end) :]: "assistant",
        asking[asking.index(u1) + 1 :][len(user_end) :]: "assistant",  # the generation prompt
    }
    try:
        with_system = render([{"role": "system", "content": s1}, {"role": "user", "content": u1}])
        before = with_system[: with_system.index(s1)]
        for token in tokenizer.all_special_tokens:
            if before.startswith(token) and token not in between_au:
                before = before[len(token) :]  # BOS
        headers.setdefault(before, "system")
    except Exception:
        pass  # a template without system turns
    headers = {h: r for h, r in headers.items() if h.strip()}
    header = re.compile("(?P<role>" + "|".join(re.escape(h) for h in sorted(headers, key=len, reverse=True)) + ")")
    preamble = talk[: talk.index(u1)]
    user_header = next((h for h, r in headers.items() if r == "user"), "")
    preamble = preamble[: -len(user_header)] if user_header and preamble.endswith(user_header) else ""
    ends = tuple(dict.fromkeys(e for e in (user_end.strip(), tokenizer.eos_token) if e))
    special = tuple(t for t in tokenizer.all_special_tokens if t not in "".join(headers))
    return Markup("tokenizer", header, ends, special, headers, preamble)
