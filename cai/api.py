"""The old name of ``cai.generation``, importable until its importers move (then deleted)."""

from cai.generation import *  # noqa: F403
from cai.generation import GenerateResult, PromptsLike, agenerate, agenerate_run, generate, run_config

__all__ = ["GenerateResult", "PromptsLike", "agenerate", "agenerate_run", "generate", "run_config"]
