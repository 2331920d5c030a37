"""One batched decoding loop for transformers causal LMs.

Prompts of different lengths are left-padded into one batch and decoded step by step with a
KV cache. Each row keeps its own sampling settings (greedy or temperature/top-p with its own
seeded generator), max_tokens and stop strings; finished rows are dropped from the batch so
short requests do not pay for long ones. Log-probs are those of the model's distribution
(temperature 1), like OpenAI and vLLM report them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cai.models.base import Completion, FinishReason, GenParams, TokenLogprob, Usage


@dataclass
class DecodeRequest:
    input_ids: list[int]
    params: GenParams
    max_new_tokens: int
    model_name: str = ""


@dataclass
class _Row:
    req: DecodeRequest
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)  # generated, without the final EOS
    generated: int = 0  # tokens the model produced, EOS included (what usage counts)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: FinishReason | None = None
    stop_at: int | None = None  # char offset of a matched stop string


def _pick_token(logits: torch.Tensor, params: GenParams, generator: torch.Generator | None) -> int:
    """Sample one token with temperature and top-p (greedy rows are picked batch-wide)."""
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


class BatchDecoder:
    def __init__(self, model: Any, tokenizer: Any, eos_ids: set[int], pad_id: int):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self._piece_cache: dict[int, str] = {}

    def _piece(self, token_id: int) -> str:
        piece = self._piece_cache.get(token_id)
        if piece is None:
            piece = self.tokenizer.decode([token_id])
            self._piece_cache[token_id] = piece
        return piece

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _record(self, row: _Row, token: int, logp: torch.Tensor | None) -> None:
        params = row.req.params
        row.generated += 1
        if params.logprobs and logp is not None:
            top: dict[str, float] = {}
            if params.top_logprobs > 0:
                values, ids = torch.topk(logp, params.top_logprobs)
                for value, tid in zip(values.tolist(), ids.tolist()):
                    top.setdefault(self._piece(tid), value)
            row.logprobs.append(TokenLogprob(self._piece(token), float(logp[token]), top))
        if token in self.eos_ids:
            row.finish = "stop"
            return
        row.tokens.append(token)
        if params.stop:
            text = self._text(row.tokens)
            hits = [i for i in (text.find(s) for s in params.stop) if i >= 0]
            if hits:
                row.finish, row.stop_at = "stop", min(hits)
                return
        if row.generated >= row.req.max_new_tokens:
            row.finish = "length"

    def _completion(self, row: _Row) -> Completion:
        text = self._text(row.tokens)
        if row.stop_at is not None:
            text = text[: row.stop_at]
        return Completion(
            text=text,
            finish_reason=row.finish or "length",
            usage=Usage(len(row.req.input_ids), row.generated, 1),
            logprobs=row.logprobs if row.req.params.logprobs else None,
            model=row.req.model_name,
        )

    @torch.inference_mode()
    def run(self, requests: Sequence[DecodeRequest]) -> list[Completion]:
        from transformers import DynamicCache

        device = self.model.device
        rows = [
            _Row(r, torch.Generator().manual_seed(r.params.seed) if r.params.seed is not None else None)
            for r in requests
        ]
        width = max(len(r.input_ids) for r in requests)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(requests):
            input_ids[i, width - len(r.input_ids) :] = torch.tensor(r.input_ids)
            mask[i, width - len(r.input_ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        active = list(range(len(rows)))
        step_input = input_ids
        while True:
            out = self.model(
                input_ids=step_input,
                attention_mask=mask,
                position_ids=positions[:, -step_input.shape[1] :],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :].float().cpu()
            greedy = torch.argmax(logits, dim=-1).tolist()
            want_logprobs = [rows[i].req.params.logprobs for i in active]
            logp = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None
            next_tokens = []
            for j, i in enumerate(active):
                row = rows[i]
                params = row.req.params
                token = greedy[j] if params.temperature <= 0 else _pick_token(logits[j], params, row.generator)
                self._record(row, token, logp[j] if logp is not None else None)
                next_tokens.append(token)
            keep = [j for j, i in enumerate(active) if rows[i].finish is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                active = [active[j] for j in keep]
                next_tokens = [next_tokens[j] for j in keep]
            step_input = torch.tensor(next_tokens, dtype=torch.long, device=device)[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        return [self._completion(row) for row in rows]
