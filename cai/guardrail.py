"""LiteLLM proxy guardrail: put a cai constitution on a LiteLLM proxy's responses.

In the proxy's config.yaml (see examples/litellm_config.yaml)::

    guardrails:
      - guardrail_name: cai-constitution
        litellm_params:
          guardrail: cai.guardrail.ConstitutionalGuardrail
          mode: post_call
          default_on: true
          cai_model: openai:my-model           # the model that critiques and revises
          cai_model_options: {base_url: http://127.0.0.1:8001/v1}
          cai_constitution: harmless
          cai_mode: always                     # always | on_flag | block
          cai_revisions: 1

The proxy calls ``async_post_call_success_hook`` with the finished response: chat completions
(every choice), text completions and Responses API output (``/v1/responses``) are revised; any
other response that carries text is refused (fail closed), never passed on unrevised. Streams
(``async_post_call_streaming_iterator_hook``) are buffered per choice, each choice revised, then
sent on; the usage chunk is kept. The reported usage adds the critique and revision calls. When
the cai model cannot be reached the client gets a 503 (a 502 for other model errors) naming the
reason. Options are prefixed ``cai_`` so they never collide with LiteLLM's own guardrail params.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks

from cai.models.base import ChatModel, Message, ModelError, TransientModelError, Usage
from cai.records import content_text
from cai.wrapper import DEFAULT_REFUSAL, ConstitutionalWrapper, WrappedCompletion, as_text_conversation


def _messages(data: dict[str, Any]) -> list[Message]:
    """The conversation of a chat request, a text completion or a Responses API request."""
    if data.get("messages"):
        return as_text_conversation(
            [{**m, "role": m.get("role", "user"), "content": content_text(m.get("content"))} for m in data["messages"]]
        )
    out: list[Message] = []
    if data.get("instructions"):
        out.append({"role": "system", "content": str(data["instructions"])})
    prompt = data.get("input", data.get("prompt"))
    if isinstance(prompt, str):
        out.append({"role": "user", "content": prompt})
    elif isinstance(prompt, list):
        for item in prompt:
            if isinstance(item, str):
                out.append({"role": "user", "content": item})
            elif isinstance(item, dict) and item.get("role"):
                role = "system" if item["role"] == "developer" else item["role"]
                out.append({"role": role, "content": content_text(item.get("content"))})
    return out


def _add_usage(usage: Any, extra: Usage) -> None:
    """Count the critique/revision calls in a LiteLLM usage object (or dict)."""
    if usage is None or not extra.calls:
        return
    names = (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens"))
    for (name, alt), add in zip(names, (extra.prompt_tokens, extra.completion_tokens)):
        for key in (name, alt):
            value = usage.get(key) if isinstance(usage, dict) else getattr(usage, key, None)
            if isinstance(value, int):
                if isinstance(usage, dict):
                    usage[key] = value + add
                else:
                    setattr(usage, key, value + add)
    total = usage.get("total_tokens") if isinstance(usage, dict) else getattr(usage, "total_tokens", None)
    if isinstance(total, int):
        if isinstance(usage, dict):
            usage["total_tokens"] = total + extra.total_tokens
        else:
            usage.total_tokens = total + extra.total_tokens


class ConstitutionalGuardrail(CustomGuardrail):
    def __init__(
        self,
        cai_model: str | ChatModel = "embedded",
        cai_model_options: dict[str, Any] | None = None,
        cai_constitution: str = "harmless",
        cai_mode: str = "always",
        cai_revisions: int | None = None,
        cai_judges: Sequence[Any] = (),
        cai_judge_options: dict[str, Any] | None = None,
        cai_threshold: float = 0.5,
        cai_refusal: str = DEFAULT_REFUSAL,
        **kwargs: Any,
    ):
        from cai.models import load_model

        kwargs.setdefault("supported_event_hooks", [GuardrailEventHooks.post_call])
        super().__init__(**kwargs)
        judges = [self._judge(j, cai_judge_options or {}) for j in cai_judges]
        self.wrapper = ConstitutionalWrapper(
            load_model(cai_model, **(cai_model_options or {})),
            cai_constitution,
            mode=cai_mode,  # type: ignore[arg-type]
            revisions=cai_revisions,
            judges=judges,
            threshold=cai_threshold,
            refusal=cai_refusal,
        )

    @staticmethod
    def _judge(spec: Any, options: dict[str, Any]) -> Any:
        if not isinstance(spec, str):
            return spec
        from judges import load_judge

        return load_judge(spec, **options)

    async def _revise(self, messages: list[Message], text: str) -> WrappedCompletion:
        try:
            return await self.wrapper.apply(messages, text)
        except ModelError as exc:
            # LiteLLM turns any other exception into a 500; the client should see what failed
            status = (
                503
                if isinstance(exc, TransientModelError) or "connection" in str(exc) or "timeout" in str(exc)
                else 502
            )
            raise HTTPException(
                status_code=status,
                detail={
                    "error": (
                        f"cai guardrail: the critique/revision model {self.wrapper.model.spec} failed "
                        f"({exc.reason}): {exc}"
                    )
                },
            ) from None

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        messages = _messages(data)
        choices = getattr(response, "choices", None)
        output = getattr(response, "output", None)
        if choices is not None:  # chat or text completion
            texts = [(c, "message") if getattr(c, "message", None) is not None else (c, "text") for c in choices]
            targets = [(c.message, "content") if kind == "message" else (c, "text") for c, kind in texts]
        elif isinstance(output, list):  # Responses API: the output_text parts of its messages
            targets = [
                (part, "text")
                for item in output
                if _get(item, "type") == "message"
                for part in (_get(item, "content") or [])
                if _get(part, "type") == "output_text"
            ]
        elif "Embedding" in type(response).__name__:
            return response
        else:
            raise HTTPException(
                status_code=400,
                detail={
                    "error": (
                        f"cai guardrail cannot revise a {type(response).__name__} response; it is not passed on unrevised"
                    )
                },
            )
        targets = [(obj, key) for obj, key in targets if isinstance(_get(obj, key), str)]
        replies = await asyncio.gather(*(self._revise(messages, _get(obj, key)) for obj, key in targets))
        for (obj, key), reply in zip(targets, replies):
            _set(obj, key, reply.text)
        _add_usage(getattr(response, "usage", None), sum((r.usage for r in replies), Usage()))
        actions = [str(r.trace.metadata.get("action")) for r in replies if r.trace is not None]
        hidden = getattr(response, "_hidden_params", None)
        if isinstance(hidden, dict) and actions:
            # LiteLLM puts _hidden_params into response headers/logs, not the body
            hidden["cai_action"] = actions[0] if len(actions) == 1 else ",".join(actions)
        return response

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> AsyncGenerator[Any, None]:
        chunks = [chunk async for chunk in response]
        if any(getattr(c, "choices", None) is None and getattr(c, "usage", None) is None for c in chunks):
            # e.g. Responses API stream events: no per-choice deltas to buffer and replace
            raise HTTPException(
                status_code=400,
                detail={
                    "error": (
                        "cai guardrail can revise streamed chat completions only; ask with stream=false "
                        "(or use /v1/chat/completions) so the answer is not passed on unrevised"
                    )
                },
            )
        texts: dict[int, str] = {}
        for c in chunks:
            for choice in c.choices or []:
                if getattr(choice, "delta", None) is not None:
                    texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        messages = _messages(request_data)
        order = sorted(texts)
        replies = dict(zip(order, await asyncio.gather(*(self._revise(messages, texts[i]) for i in order))))
        extra = sum((r.usage for r in replies.values()), Usage())
        sent: set[int] = set()
        for c in chunks:
            kept = []
            for choice in c.choices or []:
                if getattr(choice, "delta", None) is None or choice.index not in replies:
                    kept.append(choice)
                elif choice.index not in sent:  # the choice's first chunk carries its revised text
                    choice.delta.content = replies[choice.index].text
                    sent.add(choice.index)
                    kept.append(choice)
                elif choice.finish_reason is not None:
                    choice.delta.content = None
                    kept.append(choice)
            usage = getattr(c, "usage", None)
            if not kept and usage is None and c.choices:
                continue  # its text is already part of the revised first chunk
            c.choices = kept
            _add_usage(usage, extra)
            yield c


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _set(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        setattr(obj, key, value)
