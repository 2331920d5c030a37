"""transformers backend (``hf:PATH_OR_ID``) and the embedded default model (``embedded``).

Concurrent ``chat`` calls are gathered by a :class:`~cai.models.batching.MicroBatcher` into
one left-padded batch and decoded together (see :mod:`cai.models.hf_decode`), so many callers
share each forward pass. ``micro_batching=False`` runs one request at a time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from cai.models.base import Completion, GenParams, Message, PermanentModelError
from cai.models.batching import MicroBatcher
from cai.models.embedded import export_embedded
from cai.models.hf_decode import BatchDecoder, DecodeRequest
from cai.models.local import LocalChatModel

__all__ = ["HFChatModel", "export_embedded", "load_embedded", "load_hf"]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        return "auto" if dtype == "auto" else getattr(torch, dtype)
    return dtype


class HFChatModel(LocalChatModel):
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: str = "",
        device: str | None = None,
        dtype: Any = None,
        micro_batching: bool = True,
        max_batch_size: int = 16,
        batch_window_ms: float = 5.0,
        max_context: int | None = None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = str(path)
        self.spec = spec or f"hf:{self.path}"
        device = device or _default_device()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=_resolve_dtype(dtype, device), trust_remote_code=trust_remote_code
            ).to(device)
        except OSError as exc:
            raise PermanentModelError(f"cannot load transformers model {self.path!r}: {exc}") from exc
        self.model.eval()
        if not getattr(self.tokenizer, "chat_template", None):
            raise PermanentModelError(f"model {self.path!r} has no chat template; cai needs a chat model")
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else min(eos_ids, default=0)
        self.max_context = max_context or getattr(self.model.config, "max_position_embeddings", None)
        self._decoder = BatchDecoder(self.model, self.tokenizer, eos_ids, pad_id)
        self._batcher: MicroBatcher[DecodeRequest, Completion] = MicroBatcher(
            self._decoder.run,
            max_batch_size=max_batch_size if micro_batching else 1,
            window_s=batch_window_ms / 1000.0,
        )

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of the batches run so far (to check that micro-batching happens)."""
        return self._batcher.batch_sizes

    async def chat(self, messages: Sequence[Message], params: GenParams | None = None) -> Completion:
        params = params or GenParams()
        ids, max_new = self._prepare(messages, params)
        request = DecodeRequest(ids, params, max_new, self.spec)
        return await asyncio.wrap_future(self._batcher.submit(request))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop the batching thread (a later ``chat`` starts it again)."""
        self._batcher.close()


def load_hf(model: str, **options: Any) -> HFChatModel:
    if not model:
        raise PermanentModelError("hf: spec needs a path or model id, e.g. 'hf:./my-model'")
    return HFChatModel(model, spec=f"hf:{model}", **options)


def load_embedded(model: str = "", **options: Any) -> HFChatModel:
    if model:
        raise PermanentModelError(f"'embedded' takes no model name (got {model!r}); use 'embedded'")
    return HFChatModel(export_embedded(), spec="embedded", **options)
