"""The settings of one critique-revise loop (``cai.revise.revise``).

``ReviseConfig.from_constitution`` is the one place where a constitution's ``defaults``
(revisions, principle sampling, seed, stop phrases) are resolved: an option left ``None``
takes the constitution's value::

    config = ReviseConfig.from_constitution(constitution, revisions=2)
    trace = await revise(model, prompt, constitution, config)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_args

from cai.constitution import Constitution, Sampling
from cai.models.base import GenParams
from cai.quality import QualityGates

SAMPLINGS: tuple[str, ...] = get_args(Sampling)


@dataclass(frozen=True)
class ReviseConfig:
    """How ``revise`` critiques and revises one answer. Every field is checked on creation
    (ValueError naming the field)."""

    revisions: int = 1
    """Critique/revision rounds. Ignored with ``sampling="all"`` (one round per principle)."""

    sampling: Sampling = "random"
    """How each round's principle is picked: ``random`` (without replacement, seeded per
    sample), ``sequential`` (in the constitution's order, cycling) or ``all`` (every principle once)."""

    seed: int = 0
    """Seed of the ``random`` principle draw (combined with the sample id)."""

    few_shot: bool = True
    """Put the constitution's few-shot examples before the critique/revision calls (never
    before the initial answer's call)."""

    params: GenParams = field(default_factory=GenParams)
    """Sampling parameters of every call (``max_tokens`` is cut to fit the model's context)."""

    gates: QualityGates = field(default_factory=QualityGates)
    """Quality gates a revision must pass to replace the answer (``cai.quality``)."""

    stop_phrases: tuple[str, ...] = ()
    """Phrases that mean "no revision needed", besides the built-in patterns."""

    def __post_init__(self) -> None:
        if isinstance(self.revisions, bool) or not isinstance(self.revisions, int) or self.revisions < 0:
            raise ValueError(f"revisions: expected an integer >= 0, got {self.revisions!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling: expected one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")
        if not isinstance(self.few_shot, bool):
            raise ValueError(f"few_shot: expected true or false, got {self.few_shot!r}")
        if not isinstance(self.params, GenParams):
            raise ValueError(f"params: expected GenParams, got {type(self.params).__name__}")
        if not isinstance(self.gates, QualityGates):
            raise ValueError(f"gates: expected QualityGates, got {type(self.gates).__name__}")
        if isinstance(self.stop_phrases, str) or not all(isinstance(p, str) for p in self.stop_phrases):
            raise ValueError(f"stop_phrases: expected a list of strings, got {self.stop_phrases!r}")
        object.__setattr__(self, "stop_phrases", tuple(self.stop_phrases))

    @classmethod
    def from_constitution(cls, constitution: Constitution, **overrides: Any) -> ReviseConfig:
        """The constitution's defaults, with every override that is not None on top
        (``revisions``, ``sampling``, ``seed``, ``stop_phrases`` default to the constitution's;
        ``few_shot``, ``params``, ``gates`` to this class's)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"ReviseConfig has no option {', '.join(unknown)}")
        defaults = constitution.defaults
        values: dict[str, Any] = {
            "revisions": defaults.revisions,
            "sampling": defaults.sampling,
            "seed": defaults.seed,
            "stop_phrases": tuple(defaults.stop_phrases),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def resolve(cls, constitution: Constitution, config: ReviseConfig | None, **options: Any) -> ReviseConfig:
        """``config``, or one built from keyword options (the older way to pass the settings,
        ``None`` meaning the default). Both at once is a TypeError naming the options."""
        given = sorted(k for k, v in options.items() if v is not None)
        if config is None:
            return cls.from_constitution(constitution, **options)
        if given:
            raise TypeError(f"pass {', '.join(given)} in config, not next to it")
        return config

    def replace(self, **changes: Any) -> ReviseConfig:
        return dataclasses.replace(self, **changes)

    def metadata(self) -> dict[str, Any]:
        """The settings a trace records (``Trace.metadata``)."""
        return {"sampling": self.sampling, "seed": self.seed, "few_shot": self.few_shot, "revisions": self.revisions}
