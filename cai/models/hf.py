"""transformers backend (``hf:PATH_OR_ID``); the embedded default model is this backend on
the export of :mod:`cai.models.embedded`.

Concurrent ``chat`` calls are decoded together (see :mod:`cai.models.hf_decode`), so many
callers share each forward pass: by default a :class:`~cai.models.batching.ContinuousBatcher`
lets requests join and leave the running batch between decode steps;
``continuous_batching=False`` gathers whole batches (:class:`~cai.models.batching.MicroBatcher`)
that finish together. ``micro_batching=False`` runs one request at a time.

Prefix reuse: each call's key/value states (prompt + answer) stay in an LRU
(:mod:`cai.models.prefix_cache`) of ``prefix_cache_mb`` MiB, and a prompt starting with
cached tokens computes only the rest. ``prefix_cache=False`` (or ``CAI_PREFIX_CACHE=off``)
turns it off; ``CAI_PREFIX_CACHE=<MiB>`` sets the budget. ``stats()`` counts prompt tokens
sent vs computed.

Speculation: each decode step may check up to ``draft_tokens`` drafts a row (tokens that
followed the row's last few tokens earlier in its own text; see :mod:`cai.models.hf_decode`);
``draft_tokens=0`` turns it off. The output distribution is unchanged.

On CPU the float32 linear layers run on oneDNN with pre-packed weights
(:mod:`cai.models.packed_linear`: faster for the few rows of a decode step; the same results up
to float rounding); ``pack_weights=False`` keeps ``torch.nn.Linear``. Grouped-query attention
reads the key/value cache without repeating it (:mod:`cai.models.grouped_attention`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from cai.models.base import Completion, GenParams, Message, PermanentModelError
from cai.models.batching import ContinuousBatcher, MicroBatcher
from cai.models.grouped_attention import use_grouped_attention
from cai.models.hf_decode import BatchDecoder, DecodeRequest, LayerStates, full_attention_only
from cai.models.local import LocalChatModel
from cai.models.packed_linear import pack_linears
from cai.models.prefix_cache import PrefixCache

__all__ = ["HFChatModel", "load_hf"]

PREFIX_CACHE_ENV = "CAI_PREFIX_CACHE"
DEFAULT_PREFIX_CACHE_MB = 1024.0
DEFAULT_DRAFT_TOKENS = 4


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


def prefix_cache_budget(enabled: bool | None, size_mb: float | None) -> int:
    """Bytes for the prefix cache (0: off). Arguments win over ``$CAI_PREFIX_CACHE``
    (``off``/``0`` or a size in MiB)."""
    env = os.environ.get(PREFIX_CACHE_ENV, "").strip().lower()
    if enabled is None and env:
        if env in ("off", "false", "no", "0"):
            enabled = False
        elif env not in ("on", "true", "yes"):
            try:
                size_mb = float(env) if size_mb is None else size_mb
            except ValueError:
                raise PermanentModelError(
                    f"{PREFIX_CACHE_ENV}={env!r}: expected 'off' or a size in MiB", reason="bad_request"
                ) from None
    if enabled is False:
        return 0
    size_mb = DEFAULT_PREFIX_CACHE_MB if size_mb is None else size_mb
    if size_mb < 0:
        raise PermanentModelError(f"prefix_cache_mb must be >= 0 (got {size_mb})", reason="bad_request")
    return int(size_mb * 2**20)


class HFChatModel(LocalChatModel):
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: str = "",
        device: str | None = None,
        dtype: Any = None,
        micro_batching: bool = True,
        continuous_batching: bool = True,
        max_batch_size: int = 16,
        batch_window_ms: float = 5.0,
        max_context: int | None = None,
        trust_remote_code: bool = False,
        prefix_cache: bool | None = None,
        prefix_cache_mb: float | None = None,
        draft_tokens: int = DEFAULT_DRAFT_TOKENS,
        pack_weights: bool = True,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = str(path)
        self.spec = spec or f"hf:{self.path}"
        device = device or _default_device()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=_resolve_dtype(dtype, device), trust_remote_code=trust_remote_code
            )
            self.model = loaded.to(device)
        except OSError as exc:
            raise PermanentModelError(f"cannot load transformers model {self.path!r}: {exc}") from exc
        self.model.eval()
        use_grouped_attention(self.model)
        self.packed_linears = pack_linears(self.model) if pack_weights else 0  # float32 on CPU only
        if not getattr(self.tokenizer, "chat_template", None):
            raise PermanentModelError(f"model {self.path!r} has no chat template; cai needs a chat model")
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else min(eos_ids, default=0)
        self.max_context = max_context or getattr(self.model.config, "max_position_embeddings", None)
        budget = prefix_cache_budget(prefix_cache, prefix_cache_mb)
        cache: PrefixCache[LayerStates] | None = None
        if budget and full_attention_only(self.model.config):  # prefixes need every past state
            cache = PrefixCache(budget)
        if draft_tokens < 0:
            raise PermanentModelError(f"draft_tokens must be >= 0 (got {draft_tokens})", reason="bad_request")
        self._decoder = BatchDecoder(
            self.model, self.tokenizer, eos_ids, pad_id, prefix_cache=cache, draft_tokens=draft_tokens
        )
        size, window = (max_batch_size if micro_batching else 1), batch_window_ms / 1000.0
        self._batcher: ContinuousBatcher[DecodeRequest, Completion] | MicroBatcher[DecodeRequest, Completion]
        if continuous_batching:
            self._batcher = ContinuousBatcher(self._decoder, max_batch_size=size, window_s=window)
        else:
            self._batcher = MicroBatcher(self._decoder.run, max_batch_size=size, window_s=window)

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of the batches run so far (continuous batching: rows in the batch after each
        admission), to check that batching happens."""
        return self._batcher.batch_sizes

    def stats(self) -> dict[str, float]:
        """Calls, prompt tokens sent and computed, cached (reused) tokens, calls that hit the
        prefix cache, and what the prefix cache holds now (entries, bytes)."""
        cache = self._decoder.prefix_cache
        return {
            **self._decoder.stats.to_dict(),
            "cache_entries": len(cache) if cache is not None else 0,
            "cache_bytes": cache.nbytes if cache is not None else 0,
        }

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
