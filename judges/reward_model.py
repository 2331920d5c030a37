"""Reward-model judge: a HF sequence-classification model (e.g. one trained by ``training/``)
scoring (prompt, response). Concurrent ``score()`` calls are gathered into batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from cai.models.base import Message
from judges.base import PointwiseJudge, Prompt, Score, as_messages, response_text
from judges.prompts import transcript


class RewardModelJudge(PointwiseJudge):
    """Scores with logit 0 of a sequence-classification model (higher is better).

    The conversation plus the response is rendered with the tokenizer's chat template when it
    has one, else as a "Human:/Assistant:" transcript.
    """

    def __init__(self, path: str | Path, *, batch_size: int = 16, max_length: int = 1024, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"reward model folder not found: {path}")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(path)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = f"rm:{path}"
        self._queue: list[tuple[str, asyncio.Future]] = []
        self._flush_task: asyncio.Task | None = None

    def render(self, prompt: Prompt, response: str) -> str:
        messages: list[Message] = [*as_messages(prompt), {"role": "assistant", "content": response_text(response)}]
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return transcript(messages)

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Blocking batched scoring of rendered texts."""
        import torch

        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits
            out.extend(float(x) for x in logits[:, 0].float().cpu())
        return out

    async def score_many(self, items, *, concurrency: int = 16) -> list[Score]:
        texts = [self.render(p, r) for p, r in items]
        values = await asyncio.to_thread(self.score_texts, texts)
        return [Score(v) for v in values]

    async def score(self, prompt: Prompt, response: str) -> Score:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((self.render(prompt, response), future))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let concurrent callers join this batch
        while self._queue:
            batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
            try:
                values = await asyncio.to_thread(self.score_texts, [t for t, _ in batch])
            except Exception as exc:  # a model error fails this batch's scores, not the run
                for _, future in batch:
                    future.set_result(Score(None, "failed", error=f"{type(exc).__name__}: {exc}"))
                continue
            for (_, future), value in zip(batch, values):
                future.set_result(Score(value))
