"""One batched decoding loop for transformers causal LMs.

Each prompt is prefilled on its own, from the longest prefix found in an optional
:class:`~cai.models.prefix_cache.PrefixCache` (only the tokens after it are computed), and the
rows are then decoded together: their key/value states are left-padded into one batch cache.
Each row keeps its own sampling settings (greedy or temperature/top-p with its own seeded
generator), max_tokens and stop strings; finished rows leave the batch (and store their
states in the prefix cache) so short requests do not pay for long ones. Log-probs are those
of the model's distribution (temperature 1), like OpenAI and vLLM report them.

Speculation (``draft_tokens`` > 0): a row whose last tokens occurred earlier in its own text
(:mod:`cai.models.ngram_draft`) feeds what followed them as drafts in the same decode step,
and keeps the drafts the model agrees with plus one token of its own. Greedy rows keep a
draft when it is the argmax; sampled rows accept it with its probability and otherwise
sample from the rest (speculative sampling with a one-token draft distribution), so both
produce the distribution they would without drafts. On CPU a step is bound by reading the
weights, so checking a few drafts costs little more than one token. Rejected drafts leave
masked columns in the batch cache ("holes"); the cache is compacted when they add up.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cai.models.base import Completion, FinishReason, GenParams, TokenLogprob, Usage
from cai.models.ngram_draft import NgramDrafter
from cai.models.prefix_cache import PrefixCache

# per layer: (keys, values), each [1, kv_heads, tokens, head_dim]
LayerStates = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecodeRequest:
    input_ids: list[int]
    params: GenParams
    max_new_tokens: int
    model_name: str = ""


@dataclass
class DecodeStats:
    """Prompt tokens sent by callers vs computed by the model (the rest came from the prefix cache)."""

    calls: int = 0
    prompt_tokens: int = 0
    computed_tokens: int = 0
    hits: int = 0  # calls that reused a cached prefix
    prefill_s: float = 0.0  # seconds computing prompts
    decode_s: float = 0.0  # seconds in batched decode steps
    decode_steps: int = 0
    decode_rows: int = 0  # rows summed over decode steps (/ steps: the mean batch size)
    drafted: int = 0  # draft tokens checked
    accepted: int = 0  # draft tokens kept

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens - self.computed_tokens

    def to_dict(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "computed_tokens": self.computed_tokens,
            "cached_tokens": self.cached_tokens,
            "hits": self.hits,
            "prefill_s": round(self.prefill_s, 3),
            "decode_s": round(self.decode_s, 3),
            "decode_steps": self.decode_steps,
            "decode_rows": self.decode_rows,
            "drafted": self.drafted,
            "accepted": self.accepted,
        }


@dataclass
class _Row:
    req: DecodeRequest
    generator: torch.Generator | None
    key: Any = None  # the caller's handle for this request
    sampled: list[int] = field(default_factory=list)  # every token picked, EOS included
    tokens: list[int] = field(default_factory=list)  # generated, without the final EOS
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: FinishReason | None = None
    stop_at: int | None = None  # char offset of a matched stop string
    drafter: NgramDrafter | None = None  # with speculation: the row's tokens, for drafts

    @property
    def fed(self) -> list[int]:
        """The tokens whose states the model has computed (the last pick is not fed yet)."""
        return self.req.input_ids + self.sampled[:-1]


def _probs(logits: torch.Tensor, params: GenParams) -> torch.Tensor:
    """The distribution a sampled row draws from: temperature, then the top-p nucleus."""
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        probs = probs.clone()
        probs[order[drop]] = 0.0
        probs /= probs.sum()
    return probs


def _check_draft(logits: torch.Tensor, params: GenParams, generator: torch.Generator | None, draft: int) -> int:
    """A sampled row's token at a drafted position: the draft with its probability, else a
    draw from the rest of the distribution (what the row would have drawn without drafts)."""
    probs = _probs(logits, params)
    if float(torch.rand((), generator=generator)) < float(probs[draft]):
        return draft
    probs[draft] = 0.0
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def _pick_token(logits: torch.Tensor, params: GenParams, generator: torch.Generator | None) -> int:
    """Sample one token from the row's distribution (greedy rows are picked batch-wide)."""
    return int(torch.multinomial(_probs(logits, params), 1, generator=generator))


SPARE_TOKENS = 128  # room a batch cache keeps past its width, so decode steps write in place
MAX_HOLES = 64  # masked columns the longest row may carry before the batch cache is compacted
STEP_TOKENS = 16  # tokens one decode step feeds at most (rows + their drafts): past that, compute costs


def full_attention_only(config: Any) -> bool:
    """Every layer keeps all past states (no sliding window): the model's cache is plain ``DynamicLayer``s."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


@functools.cache  # one class, made on first use (transformers is imported lazily)
def _growing_layer_class() -> type:
    """``DynamicLayer`` that appends into spare room: a decode step writes one column instead of
    ``torch.cat`` copying the whole cache (that copy was ~40% of decode on CPU). Assigning
    ``keys``/``values`` (as transformers' own methods do) sets the content; the next append
    moves it into a buffer with ``SPARE_TOKENS`` of room."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self) -> None:
            self._k: torch.Tensor | None = None
            self._v: torch.Tensor | None = None
            self._n = 0
            super().__init__()

        @property
        def keys(self) -> torch.Tensor | None:
            return None if self._k is None else self._k[:, :, : self._n]

        @keys.setter
        def keys(self, value: torch.Tensor | None) -> None:
            self._k = value
            self._n = 0 if value is None or value.dim() < 3 else int(value.shape[-2])

        @property
        def values(self) -> torch.Tensor | None:
            return None if self._v is None else self._v[:, :, : self._n]

        @values.setter
        def values(self, value: torch.Tensor | None) -> None:
            self._v = value  # set after keys, with the same length

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            n, new = self._n, int(key_states.shape[-2])
            if self._k is None or self._k.dim() < 3 or n + new > self._k.shape[-2]:
                self._k = self._room(self._k, key_states, n + new)
                self._v = self._room(self._v, value_states, n + new)
            assert self._k is not None and self._v is not None
            self._k[:, :, n : n + new] = key_states
            self._v[:, :, n : n + new] = value_states
            self._n = n + new
            return self.keys, self.values

        def _room(self, old: torch.Tensor | None, like: torch.Tensor, need: int) -> torch.Tensor:
            b, h, _, d = like.shape
            buf = like.new_empty((b, h, need + SPARE_TOKENS, d))
            if old is not None and old.dim() >= 3 and self._n:
                buf[:, :, : self._n] = old[:, :, : self._n]
            return buf

    return GrowingLayer


def batch_cache(layers: LayerStates, config: Any, in_place: bool) -> Any:
    """A ``DynamicCache`` holding ``layers``; with ``in_place`` (``full_attention_only(config)``:
    sliding-window layers keep transformers' own) its decode steps append in place."""
    from transformers import DynamicCache

    if not in_place:
        return DynamicCache(ddp_cache_data=layers, config=config)
    cache = DynamicCache(config=config)
    grown = []
    for keys, values in layers:
        layer = _growing_layer_class()()
        layer.update(keys, values)
        grown.append(layer)
    cache.layers = grown
    return cache


def states_nbytes(states: LayerStates) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in states)


class _Batch:
    """The rows being decoded together: one left-padded cache (each row's states right-aligned),
    its attention mask and each row's next position. Rows join and leave between steps."""

    def __init__(self, config: Any, device: Any):
        self.config = config
        self.device = device
        self.in_place = full_attention_only(config)
        self._clear()

    def _clear(self) -> None:
        self.rows: list[_Row] = []
        self.lengths: list[int] = []  # states per row
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.positions = torch.zeros((0,), dtype=torch.long, device=self.device)
        self._step_start = 0  # first column of the last step's input

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def add(self, rows: list[_Row], states: list[LayerStates]) -> None:
        """Join rows whose prompts were prefilled (``states``: one per row)."""
        lengths = [int(s[0][0].shape[-2]) for s in states]
        width = max(self.width, *lengths)
        layers = []
        for layer in range(len(states[0])):
            k0 = states[0][layer][0]
            keys = k0.new_zeros((len(rows), k0.shape[1], width, k0.shape[3]))
            values = torch.zeros_like(keys)
            for i, row_states in enumerate(states):
                k, v = row_states[layer]
                keys[i, :, width - k.shape[-2] :] = k[0]
                values[i, :, width - v.shape[-2] :] = v[0]
            if self.rows:
                old = self.cache.layers[layer]
                grow = width - self.width
                keys = torch.cat([torch.nn.functional.pad(old.keys, (0, 0, grow, 0)), keys])
                values = torch.cat([torch.nn.functional.pad(old.values, (0, 0, grow, 0)), values])
            layers.append((keys, values))
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        for i, n in enumerate(lengths):
            mask[i, width - n :] = 1
        self.cache = batch_cache(layers, self.config, self.in_place)
        self.mask = torch.cat([torch.nn.functional.pad(self.mask, (width - self.width, 0)), mask])
        self.positions = torch.cat([self.positions, torch.tensor(lengths, dtype=torch.long, device=self.device)])
        self.rows += rows
        self.lengths += lengths

    def row_states(self, i: int, n: int) -> LayerStates:
        """A copy of the first ``n`` states of row ``i`` (a view would keep the whole batch
        cache alive); rejected drafts' columns are skipped."""
        index = self.mask[i].nonzero().squeeze(1)[:n]
        return [(layer.keys[i : i + 1, :, index], layer.values[i : i + 1, :, index]) for layer in self.cache.layers]

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, and drop the columns that are padding for all of them."""
        if not indices:
            self._clear()
            return
        index = torch.tensor(indices, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.rows = [self.rows[i] for i in indices]
        self.lengths = [self.lengths[i] for i in indices]
        unused = int(self.mask.any(0).nonzero()[0])  # leading columns that are padding in every row
        if unused > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
            self.mask = self.mask[:, unused:]

    def _compact(self) -> None:
        """Move each row's states together, right-aligned (dropping rejected drafts' columns)."""
        width = max(self.lengths)
        index = [self.mask[i].nonzero().squeeze(1) for i in range(len(self.rows))]
        layers = []
        for layer in self.cache.layers:
            keys = layer.keys.new_zeros((*layer.keys.shape[:2], width, layer.keys.shape[3]))
            values = torch.zeros_like(keys)
            for i, (cols, n) in enumerate(zip(index, self.lengths)):
                keys[i, :, width - n :] = layer.keys[i, :, cols]
                values[i, :, width - n :] = layer.values[i, :, cols]
            layers.append((keys, values))
        self.cache = batch_cache(layers, self.config, self.in_place)
        self.mask = torch.zeros((len(self.rows), width), dtype=torch.long, device=self.device)
        for i, n in enumerate(self.lengths):
            self.mask[i, width - n :] = 1

    def step(self, model: Any, drafts: list[list[int]]) -> torch.Tensor:
        """Feed each row its last picked token and its drafts (rows with fewer are padded with
        masked columns); the logits after each fed token, [rows, 1 + most drafts, vocab] on
        the CPU. ``settle`` then says how many drafts each row keeps."""
        width = 1 + max(map(len, drafts))
        tokens = [[row.sampled[-1], *d] + [0] * (width - 1 - len(d)) for row, d in zip(self.rows, drafts)]
        fed = torch.tensor([[1] * (1 + len(d)) + [0] * (width - 1 - len(d)) for d in drafts], device=self.device)
        self._step_start = self.width
        self.mask = torch.cat([self.mask, fed.to(self.mask.dtype)], dim=1)
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long, device=self.device),
            attention_mask=self.mask,
            position_ids=self.positions[:, None] + torch.arange(width, device=self.device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=width,
        )
        return out.logits.float().cpu()

    def settle(self, kept: list[int]) -> None:
        """After ``step``: row ``i`` keeps ``kept[i]`` drafts; the columns of the rest are masked."""
        for i, k in enumerate(kept):
            self.mask[i, self._step_start + 1 + k :] = 0
        self.positions = self.positions + torch.tensor(kept, device=self.device) + 1
        self.lengths = [n + 1 + k for n, k in zip(self.lengths, kept)]
        if self.width > max(self.lengths) + MAX_HOLES:
            self._compact()


class BatchDecoder:
    """Decodes batches of requests. With ``prefix_cache`` (used from one thread at a time),
    prompts reuse the states of the longest cached prefix and every finished call stores its
    own (prompt + answer) for the next one; ``stats`` counts the prompt tokens computed.
    ``draft_tokens``: drafts a row may check per step (0: no speculation)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos_ids: set[int],
        pad_id: int,
        prefix_cache: PrefixCache[LayerStates] | None = None,
        draft_tokens: int = 0,
    ):
        self.model = model
        self.draft_tokens = draft_tokens
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.prefix_cache = prefix_cache
        self.stats = DecodeStats()
        self._piece_cache: dict[int, str] = {}
        self._batch = _Batch(model.config, model.device)
        self._done: list[_Row] = []  # finished at admission, returned by the next step

    def _piece(self, token_id: int) -> str:
        piece = self._piece_cache.get(token_id)
        if piece is None:
            piece = self.tokenizer.decode([token_id])
            self._piece_cache[token_id] = piece
        return piece

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _stop_in_tail(self, tokens: list[int], stop: Sequence[str]) -> bool:
        """Whether a stop string may have just appeared: it ends in the last token, so only the
        last few tokens are decoded (4 per character covers UTF-8 split across byte tokens),
        not the whole answer at every step."""
        tail = self._text(tokens[-(4 * max(map(len, stop)) + 4) :])
        return any(s in tail for s in stop)

    def _record(self, row: _Row, token: int, logp: torch.Tensor | None) -> None:
        params = row.req.params
        row.sampled.append(token)
        if row.drafter is not None:
            row.drafter.append(token)
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
        if params.stop and self._stop_in_tail(row.tokens, params.stop):
            text = self._text(row.tokens)
            hits = [i for i in (text.find(s) for s in params.stop) if i >= 0]
            if hits:
                row.finish, row.stop_at = "stop", min(hits)
                return
        if len(row.sampled) >= row.req.max_new_tokens:
            row.finish = "length"

    def _pick_all(self, rows: Sequence[_Row], logits: torch.Tensor, drafts: list[list[int]]) -> list[int]:
        """Pick and record each row's tokens; ``logits`` [rows, positions, vocab] follow its last
        token and each of its ``drafts``. Returns the drafts each row keeps."""
        greedy = torch.argmax(logits, dim=-1).tolist()
        logp = torch.log_softmax(logits, dim=-1) if any(r.req.params.logprobs for r in rows) else None
        kept = []
        for i, (row, draft) in enumerate(zip(rows, drafts)):
            params = row.req.params
            j = 0
            while True:
                if params.temperature <= 0:
                    token = greedy[i][j]
                elif j < len(draft):
                    token = _check_draft(logits[i, j], params, row.generator, draft[j])
                else:
                    token = _pick_token(logits[i, j], params, row.generator)
                self._record(row, token, logp[i, j] if logp is not None else None)
                if row.finish is not None or j == len(draft) or token != draft[j]:
                    break
                j += 1
            kept.append(j)
        return kept

    def _drafts(self, rows: Sequence[_Row]) -> list[list[int]]:
        """Each row's drafts for the next step, within ``STEP_TOKENS`` and its token budget."""
        limit = min(self.draft_tokens, STEP_TOKENS // max(1, len(rows)) - 1)
        return [
            row.drafter.propose(min(limit, row.req.max_new_tokens - len(row.sampled) - 1))
            if row.drafter is not None and limit > 0
            else []
            for row in rows
        ]

    def _completion(self, row: _Row) -> Completion:
        text = self._text(row.tokens)
        if row.stop_at is not None:
            text = text[: row.stop_at]
        return Completion(
            text=text,
            finish_reason=row.finish or "length",
            usage=Usage(len(row.req.input_ids), len(row.sampled), 1),
            logprobs=row.logprobs if row.req.params.logprobs else None,
            model=row.req.model_name,
        )

    def _cached_prefix(self, ids: list[int]) -> tuple[int, Any]:
        """(length, cache holding that many tokens of ``ids``); at least one token is left to compute."""
        from transformers import DynamicCache

        config = self.model.config
        match = self.prefix_cache.lookup(ids) if self.prefix_cache is not None else None
        reuse = min(match.length, len(ids) - 1) if match is not None else 0
        if match is None or reuse <= 0:
            return 0, DynamicCache(config=config)
        states = [(k[:, :, :reuse], v[:, :, :reuse]) for k, v in match.payload]
        return reuse, DynamicCache(ddp_cache_data=states, config=config)

    def _prefill(self, row: _Row) -> tuple[LayerStates, torch.Tensor]:
        """The row's prompt states and its next-token logits [vocab]."""
        start = time.perf_counter()
        ids = row.req.input_ids
        reuse, cache = self._cached_prefix(ids)
        device = self.model.device
        out = self.model(
            input_ids=torch.tensor([ids[reuse:]], dtype=torch.long, device=device),
            position_ids=torch.arange(reuse, len(ids), device=device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        states = [(layer.keys, layer.values) for layer in cache.layers]
        self.stats.calls += 1
        self.stats.prompt_tokens += len(ids)
        self.stats.computed_tokens += len(ids) - reuse
        self.stats.hits += reuse > 0
        self._store(ids, states)
        logits = out.logits[0, -1, :].float().cpu()
        self.stats.prefill_s += time.perf_counter() - start
        return states, logits

    def _store(self, ids: list[int], states: LayerStates) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.store(ids, states, states_nbytes(states))

    @property
    def active(self) -> int:
        """Requests admitted and not yet returned by ``step``."""
        return len(self._batch.rows) + len(self._done)

    @torch.inference_mode()
    def admit(self, items: Sequence[tuple[Any, DecodeRequest]]) -> None:
        """Prefill these requests (``(key, request)``) and add them to the running batch."""
        rows = [
            _Row(
                req,
                torch.Generator().manual_seed(req.params.seed) if req.params.seed is not None else None,
                key,
                drafter=NgramDrafter(req.input_ids) if self.draft_tokens else None,
            )
            for key, req in items
        ]
        prefilled = [self._prefill(row) for row in rows]
        self._pick_all(rows, torch.stack([logits for _, logits in prefilled])[:, None], [[] for _ in rows])
        self._done += [row for row in rows if row.finish is not None]
        going = [i for i, row in enumerate(rows) if row.finish is None]
        if going:
            self._batch.add([rows[i] for i in going], [prefilled[i][0] for i in going])

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, Completion]]:
        """One decode step of the batch; ``(key, completion)`` of every request that finished."""
        done, self._done = self._done, []
        batch = self._batch
        if batch.rows:
            drafts = self._drafts(batch.rows)
            start = time.perf_counter()
            logits = batch.step(self.model, drafts)
            self.stats.decode_s += time.perf_counter() - start
            self.stats.decode_steps += 1
            self.stats.decode_rows += len(batch.rows)
            kept = self._pick_all(batch.rows, logits, drafts)
            batch.settle(kept)
            self.stats.drafted += sum(map(len, drafts))
            self.stats.accepted += sum(kept)
            keep = [j for j, row in enumerate(batch.rows) if row.finish is None]
            if len(keep) < len(batch.rows):
                for j, row in enumerate(batch.rows):
                    if row.finish is not None:
                        done.append(row)
                        if self.prefix_cache is not None:
                            fed = row.fed
                            self._store(fed, batch.row_states(j, len(fed)))
                batch.keep(keep)
        return [(row.key, self._completion(row)) for row in done]

    def abort(self) -> None:
        """Forget every admitted request (after an error)."""
        self._batch = _Batch(self.model.config, self.model.device)
        self._done = []

    def run(self, requests: Sequence[DecodeRequest]) -> list[Completion]:
        """Decode these requests together (outside any running batch) and return them in order."""
        results: dict[int, Completion] = {}
        self.admit(list(enumerate(requests)))
        while self.active:
            results.update(self.step())
        return [results[i] for i in range(len(requests))]
