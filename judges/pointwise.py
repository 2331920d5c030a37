"""Pointwise rubric judge: a score on an integer scale.

With log-probs the score is the expected value over the score tokens (two tokens, so "10"
split into "1", "0" is read correctly); otherwise the text (JSON when the backend supports
structured output) is parsed, re-sampling up to ``retries`` times before giving up with an
explicit ``unparseable`` status.
"""

from __future__ import annotations

import json

from cai.models.base import ChatModel, Completion, GenParams, ModelError, Usage
from judges.base import PointwiseJudge, Prompt, Score, as_messages, response_text
from judges.choices import logprob_settings, parse_score, score_distribution
from judges.prompts import DEFAULT_RUBRIC, pointwise_messages


def score_schema(low: int, high: int) -> str:
    return json.dumps(
        {
            "type": "object",
            "properties": {
                "reasoning": {"type": "string"},
                "score": {"type": "integer", "minimum": low, "maximum": high},
            },
            "required": ["reasoning", "score"],
            "additionalProperties": False,
        }
    )


async def sample_until_parsed(model: ChatModel, messages, params: GenParams, parse, retries: int):
    """Call the model, parse with ``parse(completion)``; on a parse failure re-sample (with
    temperature and a new seed, so a cache never replays the same bad answer) up to ``retries``
    times. Returns (value or None, last completion or None, usage, error or None)."""
    usage, completion = Usage(), None
    for attempt in range(retries + 1):
        if attempt:
            params = params.replace(temperature=max(params.temperature, 0.7), seed=attempt)
        try:
            completion = await model.chat(messages, params)
        except ModelError as exc:
            return None, completion, usage, f"{exc.reason}: {exc}"
        usage = usage + completion.usage
        value = parse(completion)
        if value is not None:
            return value, completion, usage, None
    return None, completion, usage, None


def finish(value, completion: Completion | None, usage: Usage, error: str | None, attempts: int, **details) -> Score:
    raw = completion.text if completion else ""
    if error is not None:
        return Score(None, "failed", raw, usage, error, details)
    if value is None:
        return Score(None, "unparseable", raw, usage, f"no readable answer after {attempts} attempt(s)", details)
    return Score(float(value), "ok", raw, usage, None, details)


class RubricJudge(PointwiseJudge):
    """Scores a response from ``low`` to ``high`` against a rubric question."""

    def __init__(
        self,
        model: ChatModel,
        *,
        rubric: str = DEFAULT_RUBRIC,
        low: int = 1,
        high: int = 10,
        logprobs: bool | None = None,
        json_output: bool | None = None,
        retries: int = 2,
        top_logprobs: int = 20,
        max_tokens: int = 96,
    ):
        if high <= low:
            raise ValueError(f"scale high ({high}) must be above low ({low})")
        self.model, self.rubric, self.low, self.high = model, rubric, low, high
        self.scale = (float(low), float(high))
        self.logprobs, self.top_logprobs = logprob_settings(model, logprobs, top_logprobs)
        self.json_output = (
            model.capabilities.structured_output if json_output is None else json_output
        ) and not self.logprobs
        self.retries = retries
        self.max_tokens = max_tokens
        self.name = f"pointwise:{model.spec}"

    def params(self) -> GenParams:
        if self.logprobs:
            return GenParams(max_tokens=2, logprobs=True, top_logprobs=self.top_logprobs)
        schema = score_schema(self.low, self.high) if self.json_output else None
        return GenParams(max_tokens=self.max_tokens, json_schema=schema)

    def read(self, completion: Completion):
        if self.logprobs:
            dist = score_distribution(completion, self.low, self.high)
            if dist is not None:
                return sum(v * p for v, p in dist.items())
        return parse_score(completion.text, self.low, self.high)

    async def score(self, prompt: Prompt, response: str) -> Score:
        messages = pointwise_messages(
            as_messages(prompt),
            response_text(response),
            self.rubric,
            self.low,
            self.high,
            json_output=self.json_output,
        )
        value, completion, usage, error = await sample_until_parsed(
            self.model, messages, self.params(), self.read, self.retries
        )
        return finish(value, completion, usage, error, self.retries + 1, low=self.low, high=self.high)
