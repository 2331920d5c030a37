"""Constitution schema and loader.

SCHEMA CONTRACT (other modules rely on these attribute names):
  Constitution.name, .version, .description, .language
  Constitution.principles: list[Principle(name, critique, revision, tags)]
  Constitution.judge_principles: list[JudgePrinciple(name, question)]
  Constitution.few_shot: list[FewShotExample(prompt, response, critique_request, critique,
                                              revision_request, revision)]; .to_messages()
  Constitution.defaults: Defaults(revisions, sampling, seed, stop_phrases)
  Constitution.hash  (stable content hash of the resolved constitution)
  load_constitution(name_or_path) -> Constitution
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Sampling = Literal["random", "all", "sequential"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Principle(_Strict):
    name: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    tags: list[str] = []


class JudgePrinciple(_Strict):
    name: str = Field(min_length=1)
    question: str = Field(min_length=1)


class FewShotExample(_Strict):
    prompt: str
    response: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str

    def to_messages(self) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.response},
            {"role": "user", "content": self.critique_request},
            {"role": "assistant", "content": self.critique},
            {"role": "user", "content": self.revision_request},
            {"role": "assistant", "content": self.revision},
        ]


class Defaults(_Strict):
    revisions: int = Field(default=1, ge=0)
    sampling: Sampling = "random"
    seed: int = 0
    stop_phrases: list[str] = []


class Constitution(_Strict):
    name: str = Field(min_length=1)
    version: str = "1"
    description: str = ""
    language: str = "en"
    principles: list[Principle] = Field(min_length=1)
    judge_principles: list[JudgePrinciple] = []
    few_shot: list[FewShotExample] = []
    defaults: Defaults = Defaults()

    @property
    def hash(self) -> str:
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}#{self.hash}"


def load_constitution(name_or_path: str | Path | Constitution) -> Constitution:
    if isinstance(name_or_path, Constitution):
        return name_or_path
    path = Path(name_or_path)
    if not path.exists():
        from constitutions import path_of

        path = path_of(str(name_or_path))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return Constitution.model_validate(data)
