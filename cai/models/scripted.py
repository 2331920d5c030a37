"""A deterministic model driven by a Python function: for unit tests of logic and for users
testing their own pipelines without a model. Never a stand-in for a real model in
integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from cai.models.base import Capabilities, ChatModel, Completion, GenParams, Message, Usage

Script = Callable[[Sequence[Message], GenParams], "str | Completion"]


class ScriptedModel(ChatModel):
    def __init__(
        self,
        script: Script | Sequence[str],
        *,
        spec: str = "scripted",
        capabilities: Capabilities | None = None,
        delay: float = 0.0,
    ):
        if callable(script):
            self._script = script
        else:
            replies = list(script)
            self._script = lambda messages, params: replies.pop(0)
        self.spec = spec
        self._capabilities = capabilities or Capabilities(logprobs=True, max_top_logprobs=20)
        self.delay = delay
        self.calls: list[tuple[list[Message], GenParams]] = []

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = params or GenParams()
        self.calls.append(([dict(m) for m in messages], params))
        if self.delay:
            await asyncio.sleep(self.delay)
        out = self._script(messages, params)
        if isinstance(out, Completion):
            return out
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        return Completion(
            text=out,
            usage=Usage(prompt_tokens, len(out.split()), 1),
            model=self.spec,
        )
