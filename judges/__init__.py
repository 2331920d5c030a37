"""Judges: pairwise LLM (RLAIF labeller), pointwise rubric, principle violation, reward model,
rules, ensembles. Load any of them from a spec string with ``load_judge``."""

from judges.base import OrderResult, PairwiseJudge, PairwiseVerdict, PointwiseJudge, Score
from judges.ensemble import PairwiseEnsemble, PointwiseEnsemble, ensemble
from judges.pairwise import LLMPairwiseJudge
from judges.pointwise import RubricJudge
from judges.registry import JudgeSpecError, available_judges, load_judge
from judges.rules import LengthJudge, RefusalJudge, RegexJudge
from judges.violation import ViolationJudge

__all__ = [
    "JudgeSpecError",
    "LLMPairwiseJudge",
    "LengthJudge",
    "OrderResult",
    "PairwiseEnsemble",
    "PairwiseJudge",
    "PairwiseVerdict",
    "PointwiseEnsemble",
    "PointwiseJudge",
    "RefusalJudge",
    "RegexJudge",
    "RubricJudge",
    "Score",
    "ViolationJudge",
    "available_judges",
    "ensemble",
    "load_judge",
]
