"""``litellm:PROVIDER/MODEL``: Anthropic, Bedrock, Vertex, Azure, ... through LiteLLM.

Credentials come from the provider's usual environment variables (e.g. ``ANTHROPIC_API_KEY``)
or ``api_key=``; ``base_url=`` (alias ``api_base=``) points at a custom endpoint. LiteLLM's own
retries are off; the same :class:`~cai.models.retry.CallPolicy` as the openai backend applies.
Parameters a provider does not support (e.g. ``seed``) are dropped rather than failing.
"""

from __future__ import annotations

import os
from typing import Any

from cai.models.base import PermanentModelError
from cai.models.openai_compat import RemoteChatModel
from cai.redact import register_secret


def _litellm() -> Any:
    # without this, importing litellm tries to download a price list (slow offline)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


class LiteLLMChatModel(RemoteChatModel):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        extra: dict[str, Any] | None = None,
        spec: str = "",
        **policy: Any,
    ):
        if "/" not in model:
            raise PermanentModelError(
                f"litellm spec needs PROVIDER/MODEL, e.g. 'litellm:anthropic/claude-3-5-haiku-latest' (got {model!r})"
            )
        super().__init__(model, spec=spec or f"litellm:{model}", **policy)
        self._litellm = _litellm()
        self.api_base = base_url or api_base
        self._api_key = api_key
        register_secret(api_key)
        self.extra = extra or {}

    async def _create(self, kwargs: dict[str, Any]) -> Any:
        return await self._litellm.acompletion(
            model=self.model,
            api_base=self.api_base,
            api_key=self._api_key,
            timeout=self.policy.timeout + 5,  # the policy's deadline fires first
            num_retries=0,
            max_retries=0,
            drop_params=True,
            **kwargs,
            **self.extra,
        )


def load_litellm(model: str, **options: Any) -> LiteLLMChatModel:
    return LiteLLMChatModel(model, **options)
