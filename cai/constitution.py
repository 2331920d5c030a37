"""Constitution schema and loader.

SCHEMA CONTRACT (other modules rely on these attribute names):
  Constitution.name, .version, .description, .language
  Constitution.principles: list[Principle(name, critique, revision, tags, rule)]
    (rule: optional one-sentence statement, "The response must not ...", for judges that
     check a response against the principle; Principle.statement gives rule or, if empty,
     the critique request)
  Constitution.judge_principles: list[JudgePrinciple(name, question)]
  Constitution.few_shot: list[FewShotExample(prompt, response, critique_request, critique,
                                              revision_request, revision)]; .to_messages()
  Constitution.defaults: Defaults(revisions, sampling, seed, stop_phrases)
  Constitution.hash  (stable content hash of the resolved constitution)
  load_constitution(name_or_path) -> Constitution

A YAML file may also say ``extends: PARENT`` (a shipped name, or a path ending in .yaml/.yml
relative to the file) and ``drop: [names]``. The child inherits everything it does not set:
its principles and judge principles are appended to the parent's (minus ``drop``), its
``few_shot`` replaces the parent's, and its ``defaults`` keys override the parent's one by one.

Every problem in a file is reported as ``file:line: field: message`` (ConstitutionError).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from cai.errors import ConstitutionError, Problem
from cai.yamlfile import YamlFile, did_you_mean

Sampling = Literal["random", "all", "sequential"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Principle(_Strict):
    name: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    tags: list[str] = []
    rule: str = ""

    @property
    def statement(self) -> str:
        """The principle as a statement about a response (for violation judges)."""
        return self.rule or self.critique


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

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # `version: 2` or `version: 2025-01-31` is natural YAML; keep it as text
        if isinstance(value, (int, float, datetime.date)) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("principles", "judge_principles")
    @classmethod
    def _unique_names(cls, items: Sequence[Principle | JudgePrinciple]) -> Any:
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            if item.name in seen:
                raise PydanticCustomError(
                    "duplicate_name",
                    "duplicate name '{name}' (also item {first})",
                    {"name": item.name, "index": index, "first": seen[item.name]},
                )
            seen[item.name] = index
        return items

    @property
    def hash(self) -> str:
        # json + sha256 cost ~0.3 ms, asked once a sample: remembered per object (frozen, so
        # its content cannot change; model_copy makes a new object), not in a private attribute,
        # which pydantic would compare in ==
        known = _HASHES.get(id(self))
        if known is not None and known[0] is self:
            return known[1]
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
        if len(_HASHES) >= 16:
            _HASHES.clear()
        _HASHES[id(self)] = (self, digest)
        return digest

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}#{self.hash}"

    def principle(self, name: str) -> Principle:
        for item in self.principles:
            if item.name == name:
                return item
        raise KeyError(f"constitution {self.name!r} has no principle {name!r}")


_HASHES: dict[int, tuple[Constitution, str]] = {}  # id -> (the object, its hash); see Constitution.hash


class _ConstitutionFile(Constitution):
    """What one YAML file may say: a Constitution plus ``extends``/``drop``; with a parent,
    principles may be left out."""

    extends: str | None = None
    drop: list[str] = []
    principles: list[Principle] = []


# ---------------------------------------------------------------- loading


def _shipped_path(name: str) -> Path | None:
    from constitutions import HERE

    path = HERE / f"{name}.yaml"
    return path if path.is_file() else None


def _shipped_names() -> list[str]:
    from constitutions import names

    return names()


def _is_path_like(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text


def _find(reference: str, relative_to: Path | None = None) -> Path | None:
    if _is_path_like(reference):
        path = Path(reference).expanduser()
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        return path if path.is_file() else None
    local = Path(reference)
    if relative_to is None and local.is_file():
        return local
    return _shipped_path(reference)


def _not_found_message(reference: str) -> str:
    if _is_path_like(reference):
        return f"no such file {reference!r}"
    return f"no constitution named {reference!r}" + did_you_mean(reference, _shipped_names())


# resolved path -> (the text of every file it was built from, result). Reading is cheap and
# parsing is not; comparing text also sees edits that coarse file mtimes would miss.
Sources = tuple[tuple[Path, str], ...]
_cache: dict[Path, tuple[Sources, Constitution]] = {}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConstitutionError([Problem(str(path), None, "", f"cannot read file: {exc}")]) from None


def _unchanged(sources: Sources) -> bool:
    try:
        return all(path.read_text(encoding="utf-8") == text for path, text in sources)
    except (OSError, UnicodeDecodeError):
        return False


def _load_file(path: Path, chain: tuple[Path, ...]) -> tuple[Constitution, Sources]:
    """Load and resolve one file; returns the constitution and every file it was built from."""
    path = path.resolve()
    text = _read(path)
    cached = _cache.get(path)
    if cached and cached[0][0][1] == text and _unchanged(cached[0][1:]):
        return cached[1], cached[0]
    source = YamlFile(str(path), text, ConstitutionError, expect="a mapping with name and principles")
    try:
        spec = _ConstitutionFile.model_validate(source.data)
    except ValidationError as exc:
        raise ConstitutionError(source.validation_problems(exc, _ConstitutionFile)) from None

    parent: Constitution | None = None
    sources: Sources = ((path, text),)
    if spec.extends is not None:
        parent_path = _find(spec.extends, relative_to=path.parent)
        if parent_path is None:
            raise ConstitutionError([source.problem(("extends",), _not_found_message(spec.extends))])
        if parent_path.resolve() in (*chain, path):
            names = " -> ".join(p.name for p in (*chain, path, parent_path.resolve()))
            raise ConstitutionError([source.problem(("extends",), f"extends cycle: {names}")])
        parent, parent_sources = _load_file(parent_path, (*chain, path))
        sources += parent_sources
    elif spec.drop:
        source.error(("drop",), "drop needs extends: there is no parent to drop principles from")

    constitution = _resolve(spec, parent, source)
    _cache[path] = (sources, constitution)
    return constitution, sources


def _resolve(spec: _ConstitutionFile, parent: Constitution | None, source: YamlFile) -> Constitution:
    own = spec.model_fields_set
    data = spec.model_dump(exclude={"extends", "drop"})
    if parent is not None:
        inherited = {p.name for p in parent.principles} | {j.name for j in parent.judge_principles}
        for index, name in enumerate(spec.drop):
            if name not in inherited:
                source.error(
                    ("drop", index),
                    f"{spec.extends!r} has no principle named {name!r}" + did_you_mean(name, sorted(inherited)),
                )
        base = parent.model_dump()
        for key in ("version", "description", "language", "few_shot"):
            if key not in own:
                data[key] = base[key]
        for key in ("principles", "judge_principles"):
            kept = [item for item in base[key] if item["name"] not in spec.drop]
            kept_names = {item["name"] for item in kept}
            for index, item in enumerate(data[key]):
                if item["name"] in kept_names:
                    source.error(
                        (key, index, "name"),
                        f"{item['name']!r} is already inherited from {spec.extends!r}; add it to drop to replace it",
                    )
            data[key] = kept + data[key]
        data["defaults"] = {**base["defaults"], **spec.defaults.model_dump(include=spec.defaults.model_fields_set)}
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        problems = source.validation_problems(exc, Constitution)
        raise ConstitutionError(problems) from None


def load_constitution(name_or_path: str | Path | Constitution) -> Constitution:
    """Load a shipped constitution by name (``harmless``) or any YAML file by path.

    Raises ConstitutionError (a ValueError) naming file, line and field on bad input.
    """
    if isinstance(name_or_path, Constitution):
        return name_or_path
    reference = str(name_or_path)
    path = _find(reference)
    if path is None:
        raise ConstitutionError([Problem(reference, None, "", _not_found_message(reference))])
    return _load_file(path, ())[0]


def shipped_constitutions() -> list[str]:
    """Names of the constitutions shipped with cai."""
    return _shipped_names()
