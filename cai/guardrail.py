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

The proxy calls ``async_post_call_success_hook`` with the finished response (and
``async_post_call_streaming_iterator_hook`` for streams, which are buffered, run through the
constitution, then sent on: the loop is never skipped for streaming clients). Options are
prefixed ``cai_`` so they never collide with LiteLLM's own guardrail params.
"""

from __future__ import annotations

from typing import Any, AsyncGenerator, Sequence

from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks

from cai.models.base import ChatModel, Message
from cai.wrapper import DEFAULT_REFUSAL, ConstitutionalWrapper


def _messages(data: dict[str, Any]) -> list[Message]:
    out = []
    for m in data.get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
        out.append({"role": m.get("role", "user"), "content": content or ""})
    return out


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

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        messages = _messages(data)
        for choice in getattr(response, "choices", None) or []:
            message = getattr(choice, "message", None)
            if message is None or not isinstance(message.content, str):
                continue
            reply = await self.wrapper.apply(messages, message.content)
            message.content = reply.text
            if reply.trace is not None:
                # LiteLLM puts _hidden_params into response headers/logs, not the body
                hidden = getattr(response, "_hidden_params", None)
                if isinstance(hidden, dict):
                    hidden["cai_action"] = reply.trace.metadata.get("action")
        return response

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> AsyncGenerator[Any, None]:
        chunks = [chunk async for chunk in response]
        text = "".join(
            c.choices[0].delta.content or ""
            for c in chunks
            if getattr(c, "choices", None) and getattr(c.choices[0], "delta", None) is not None
        )
        content_chunks = [c for c in chunks if getattr(c, "choices", None)]
        if not content_chunks:
            for c in chunks:
                yield c
            return
        reply = await self.wrapper.apply(_messages(request_data), text)
        first = content_chunks[0]
        first.choices[0].delta.content = reply.text
        yield first
        for c in chunks[1:]:
            if getattr(c, "choices", None) and c.choices[0].delta is not None:
                c.choices[0].delta.content = None
                if c.choices[0].finish_reason is None:
                    continue  # its text is already part of the revised first chunk
            yield c
