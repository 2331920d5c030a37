"""What the in-process backends (transformers, vLLM) share: the chat template, token counting,
the context-length check, and the limits on log-prob alternatives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cai.models.base import Capabilities, ChatModel, ContextLengthError, GenParams, Message, PermanentModelError

MAX_TOP_LOGPROBS = 20


class LocalChatModel(ChatModel):
    """Subclasses set ``tokenizer`` (a transformers tokenizer with a chat template) and
    ``max_context`` (tokens, or None when unknown)."""

    tokenizer: Any
    max_context: int | None = None
    structured_output: bool = False

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            logprobs=True,
            max_top_logprobs=MAX_TOP_LOGPROBS,
            max_context=self.max_context,
            structured_output=self.structured_output,
        )

    def _encode(self, messages: Sequence[Message]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        return len(self._encode(messages))

    def _prepare(self, messages: Sequence[Message], params: GenParams) -> tuple[list[int], int]:
        """Prompt token ids and the completion budget (max_tokens, cut to the room left)."""
        if params.top_logprobs > MAX_TOP_LOGPROBS:
            raise PermanentModelError(
                f"top_logprobs={params.top_logprobs} exceeds the maximum {MAX_TOP_LOGPROBS}", reason="bad_request"
            )
        ids = self._encode(messages)
        if self.max_context is None:
            return ids, params.max_tokens
        room = self.max_context - len(ids)
        if room <= 0:
            raise ContextLengthError(
                f"prompt is {len(ids)} tokens; {self.spec} has a context of {self.max_context} tokens"
            )
        return ids, max(1, min(params.max_tokens, room))
