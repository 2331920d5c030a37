"""The LLM pairwise judge (RLAIF labeller).

For each pair it asks a multiple-choice question in both presentation orders, (A, B) and
(B, A), for each of ``k`` comparison principles sampled per pair. Each answer is read from the
answer token's log-probs when the backend gives them (one token, ``max_tokens=1``), else from
the text. Orders are mapped back to the caller's A, averaged, and flagged when they disagree.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence

from cai.constitution import Constitution, load_constitution
from cai.models.base import ChatModel, Completion, GenParams, ModelError, Usage
from judges.base import OrderResult, PairwiseJudge, PairwiseVerdict, Prompt, as_messages, response_text
from judges.choices import binary_probability, logprob_settings, parse_ab
from judges.prompts import DEFAULT_PAIRWISE_PRINCIPLES, pairwise_messages

DEFAULT_COT_CLAMP = (0.4, 0.6)


def principles_from(constitution: Constitution | str | None) -> list[str]:
    if constitution is None:
        return list(DEFAULT_PAIRWISE_PRINCIPLES)
    questions = [p.question for p in load_constitution(constitution).judge_principles]
    return questions or list(DEFAULT_PAIRWISE_PRINCIPLES)


def clamp(p: float, bounds: tuple[float, float] | None) -> float:
    if bounds is None:
        return p
    low, high = bounds
    return min(high, max(low, p))


class LLMPairwiseJudge(PairwiseJudge):
    """Pairwise judge over any ChatModel.

    Args:
        model: the judge model.
        principles: comparison questions; default: the constitution's ``judge_principles``,
            else ``DEFAULT_PAIRWISE_PRINCIPLES``.
        k: principles sampled per pair (deterministic per pair and ``seed``); their
            probabilities are averaged.
        logprobs: read answers from log-probs; None = when the backend supports them.
        cot: ask for reasoning before the answer; the probability is then clamped.
        clamp_range: bounds for each order's probability; default (0.4, 0.6) with ``cot``,
            none without. Pass ``False`` to disable.
        text_max_tokens / cot_max_tokens: generation budget on the text and CoT paths.
        prime_prefix: send one order first and the rest once it is done, so a server with
            prefix caching (vLLM, SGLang) prefills the shared prompt head once per pair;
            ``False`` sends all at once (lower latency per pair, more prefill).
    """

    def __init__(
        self,
        model: ChatModel,
        *,
        principles: Sequence[str] | None = None,
        constitution: Constitution | str | None = None,
        k: int = 1,
        seed: int = 0,
        logprobs: bool | None = None,
        cot: bool = False,
        clamp_range: tuple[float, float] | None | bool = None,
        top_logprobs: int = 20,
        text_max_tokens: int = 8,
        cot_max_tokens: int = 384,
        prime_prefix: bool = True,
    ):
        self.model = model
        self.principles = list(principles) if principles else principles_from(constitution)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = min(k, len(self.principles))
        self.seed = seed
        self.logprobs, self.top_logprobs = logprob_settings(model, logprobs, top_logprobs)
        self.cot = cot
        if clamp_range is False:
            self.clamp_range = None
        elif clamp_range is None or clamp_range is True:
            self.clamp_range = DEFAULT_COT_CLAMP if cot else None
        else:
            self.clamp_range = tuple(clamp_range)  # type: ignore[assignment]
        self.text_max_tokens = text_max_tokens
        self.cot_max_tokens = cot_max_tokens
        self.prime_prefix = prime_prefix
        self.name = f"pairwise:{model.spec}"

    @property
    def params(self) -> GenParams:
        if self.cot:
            max_tokens = self.cot_max_tokens
        else:
            max_tokens = 1 if self.logprobs else self.text_max_tokens
        if self.logprobs:
            return GenParams(max_tokens=max_tokens, logprobs=True, top_logprobs=self.top_logprobs)
        return GenParams(max_tokens=max_tokens)

    def sample_principles(self, prompt: Prompt, a: str, b: str) -> list[str]:
        if self.k == len(self.principles):
            return list(self.principles)
        digest = hashlib.sha256(repr((self.seed, as_messages(prompt), a, b)).encode()).hexdigest()
        return random.Random(digest).sample(self.principles, self.k)

    def read(self, completion: Completion) -> float | None:
        """p(first shown is better) from one completion, or None when unreadable."""
        p = binary_probability(completion, "A", "B") if self.logprobs else None
        if p is None:
            choice = parse_ab(completion.text)
            if choice is None:
                return None
            p = 1.0 if choice == "A" else 0.0
        return clamp(p, self.clamp_range)

    async def _order(self, prompt: Prompt, a: str, b: str, principle: str, swapped: bool):
        first, second = (b, a) if swapped else (a, b)
        messages = pairwise_messages(as_messages(prompt), first, second, principle, cot=self.cot)
        try:
            completion = await self.model.chat(messages, self.params)
        except ModelError as exc:
            result = OrderResult(swapped, None, "failed", principle=principle, error=f"{exc.reason}: {exc}")
            return result, Usage()
        p_first = self.read(completion)
        if p_first is None:
            return OrderResult(swapped, None, "unparseable", completion.text, principle), completion.usage
        p_a = 1.0 - p_first if swapped else p_first
        return OrderResult(swapped, p_a, "ok", completion.text, principle), completion.usage

    async def compare(self, prompt: Prompt, a: str, b: str) -> PairwiseVerdict:
        a, b = response_text(a), response_text(b)
        principles = self.sample_principles(prompt, a, b)
        jobs = [self._order(prompt, a, b, pr, swapped) for pr in principles for swapped in (False, True)]
        if self.prime_prefix:
            # the first call fills the server's prefix cache with the shared instructions and
            # conversation; the other orders/principles then only prefill what differs
            results = [await jobs[0], *await asyncio.gather(*jobs[1:])]
        else:
            results = await asyncio.gather(*jobs)
        orders = [r for r, _ in results]
        usage = sum((u for _, u in results), Usage())
        return combine_orders(orders, usage)


def combine_orders(orders: list[OrderResult], usage: Usage) -> PairwiseVerdict:
    """Average per-order results into one verdict.

    A principle counts only when both its orders are readable; any backend failure fails the
    verdict (so a resumed run retries it), and no readable principle means unparseable.
    """
    failed = [o for o in orders if o.status == "failed"]
    if failed:
        return PairwiseVerdict(None, "failed", orders=orders, usage=usage, error=failed[0].error)
    by_principle: dict[str, list[OrderResult]] = {}
    for o in orders:
        by_principle.setdefault(o.principle, []).append(o)
    usable = [os for os in by_principle.values() if all(o.status == "ok" for o in os)]
    if not usable:
        return PairwiseVerdict(
            None, "unparseable", orders=orders, usage=usage, error="no readable answer in both orders"
        )
    forward = [o.p_a for os in usable for o in os if not o.swapped]
    backward = [o.p_a for os in usable for o in os if o.swapped]
    p_forward = sum(forward) / len(forward)  # type: ignore[arg-type]
    p_backward = sum(backward) / len(backward)  # type: ignore[arg-type]
    consistent = (p_forward - 0.5) * (p_backward - 0.5) > 0
    return PairwiseVerdict((p_forward + p_backward) / 2, "ok", consistent, orders, usage)
