"""The model under evaluation: a model spec, optionally behind the constitutional wrapper
(same options as ``cai serve``), with every call cached in the eval's run store.

Model evals (``cai eval safety``, ``cai eval winrate``) describe each side with a
``Subject``, so "raw vs wrapped" and "base vs DPO" are the same command.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cai.models.base import ChatModel
from cai.models.registry import load_model
from cai.store import CachedModel, RunStore
from cai.wrapper import MODES


@dataclass(frozen=True)
class Subject:
    model: str  # model spec: embedded, hf:PATH, openai:NAME, ...
    constitution: str | None = None  # wrap the model with this constitution
    mode: str = "always"  # wrapper mode (off | always | on_flag | block)
    revisions: int | None = None
    flag_judge: str | None = None  # on_flag / block: violation judge spec (default violation:MODEL)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}; got {self.mode!r}")

    @property
    def wrapped(self) -> bool:
        return self.constitution is not None and self.mode != "off"

    @property
    def name(self) -> str:
        if not self.wrapped:
            return self.model
        revisions = "" if self.revisions is None else f", {self.revisions} rev"
        return f"{self.model} + {self.constitution} ({self.mode}{revisions})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(
        self,
        store: RunStore,
        *,
        model: ChatModel | None = None,
        model_options: dict[str, Any] | None = None,
    ) -> ChatModel:
        """The ChatModel to evaluate; ``model`` replaces loading ``self.model`` (e.g. one
        already loaded model shared by both sides). The upstream's calls go through the store's
        cache, inside the wrapper, so a resumed eval repeats no finished critique or revision."""
        upstream = CachedModel(model or load_model(self.model, **(model_options or {})), store)
        if not self.wrapped or self.constitution is None:
            return upstream
        from cai.wrapper import ConstitutionalWrapper, ViolationScorer
        from judges.base import PointwiseJudge
        from judges.registry import load_judge

        judges: list[ViolationScorer] = []
        if self.mode in ("on_flag", "block"):
            spec = self.flag_judge or f"violation:{self.model}"
            shared = spec.partition(":")[2] == self.model
            judge = load_judge(
                spec,
                model=upstream if shared else None,  # upstream is cached already
                model_options=model_options,
                store=None if shared else store,
            )
            if not isinstance(judge, PointwiseJudge):
                raise ValueError(f"flag judge {spec!r}: needs a pointwise judge such as violation:MODEL")
            judges.append(judge)
        return ConstitutionalWrapper(
            upstream,
            self.constitution,
            mode=self.mode,  # type: ignore[arg-type]
            revisions=self.revisions,
            judges=judges,
        )
