"""YAML input files with line numbers: parse with safe_load-level features only, and report
every problem (syntax, duplicate keys, pydantic validation errors) as
``file:line: field: message``. Any YAML input (constitutions, recipes, configs) can use it::

    source = YamlFile(path, path.read_text(), error=MyError)
    try:
        config = MyModel.model_validate(source.data)
    except ValidationError as exc:
        raise MyError(source.validation_problems(exc, MyModel)) from None

A validator may raise ``PydanticCustomError("duplicate_name", ..., {"name", "index", "first"})``
on a list of named items; the problem then points at the second item's ``name``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Union, get_args

import yaml
from pydantic import BaseModel, ValidationError

Loc = tuple[Union[str, int], ...]
# libyaml is ~6x faster; both give line marks and accept only safe_load-level YAML
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class InputFileError(ValueError):
    """One or more problems in an input file, each naming file, line and field."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def field_path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<document>"


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(choices)})" if choices else ""


class YamlFile:
    """A parsed YAML mapping document: its node tree (for line numbers) and its plain data
    (``.data``). Problems are raised as ``error`` (an InputFileError subclass)."""

    def __init__(self, file: str, text: str, error: type[InputFileError] = InputFileError,
                 expect: str = "a mapping"):
        self.file, self.exc_type = file, error
        try:
            self.root = yaml.compose(text, Loader=_Loader)
            if self.root is not None:
                self._check_duplicate_keys(self.root, ())
                self.data = _Loader("").construct_document(self.root)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = exc.problem or "invalid YAML"
            if exc.context:
                message = f"{message} ({exc.context})"
            line = mark.line + 1 if mark else None
            raise self.exc_type([Problem(file, line, "yaml", message)]) from None
        except yaml.reader.ReaderError as exc:  # e.g. control characters: a position, no mark
            line = text.count("\n", 0, exc.position) + 1
            raise self.exc_type([Problem(file, line, "yaml", f"unacceptable character: {exc.reason}")]) from None
        except yaml.YAMLError as exc:
            raise self.exc_type([Problem(file, None, "yaml", str(exc))]) from None
        if self.root is None:
            self.error((), f"file is empty; expected {expect}")
        if not isinstance(self.data, dict):
            self.error((), f"expected a mapping at the top level, got {type(self.data).__name__}")

    def _check_duplicate_keys(self, node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    line = key.start_mark.line + 1
                    if key.value in first:
                        raise self.exc_type([Problem(
                            self.file, line, field_path((*loc, key.value)),
                            f"duplicate key (first set at line {first[key.value]})",
                        )])
                    first[key.value] = line
                self._check_duplicate_keys(value, (*loc, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_duplicate_keys(item, (*loc, index))

    def line_of(self, loc: Loc) -> int:
        """Line of the deepest node along ``loc`` (a key's line for a mapping entry)."""
        node = self.root
        if node is None:
            return 1
        line = node.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
                if match is None:
                    break
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(self.file, self.line_of(loc), field_path(loc), message)

    def error(self, loc: Loc, message: str) -> None:
        raise self.exc_type([self.problem(loc, message)])

    def validation_problems(self, exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
        errors = exc.errors()
        # a typo like `critque` also makes `critique` missing: report the typo only
        typos = set()
        for err in errors:
            if err["type"] == "extra_forbidden":
                owner = _model_at(model, err["loc"][:-1])
                err["allowed"] = list(owner.model_fields) if owner else []
                close = difflib.get_close_matches(str(err["loc"][-1]), err["allowed"], n=1, cutoff=0.6)
                typos.update((*err["loc"][:-1], name) for name in close)
        problems = []
        for err in errors:
            loc: Loc = tuple(err["loc"])
            kind, given = err["type"], err.get("input")
            if kind == "missing":
                if loc in typos:
                    continue
                message = "required field is missing"
            elif kind == "extra_forbidden":
                message = f"unknown field {loc[-1]!r}" + did_you_mean(str(loc[-1]), err["allowed"])
            elif kind == "duplicate_name":
                first_line = self.line_of((*loc, err["ctx"]["first"], "name"))
                loc = (*loc, err["ctx"]["index"], "name")
                message = f"duplicate name {err['ctx']['name']!r} (first used at line {first_line})"
            elif kind == "too_short" and isinstance(given, list):
                message = f"must have at least {err['ctx']['min_length']} item(s), got {len(given)}"
            else:
                message = err["msg"]
                if kind.endswith("_type") or kind.endswith("_parsing"):
                    shown = repr(given) if len(repr(given)) <= 40 else repr(given)[:37] + "..."
                    message += f" (got {type(given).__name__}: {shown})"
            problems.append(self.problem(loc, message))
        return sorted(problems, key=lambda p: p.line or 0)


def _model_at(model: type[BaseModel], path: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the value at ``path`` (list indexes skipped)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current else None
        current = _inner_model(field.annotation) if field else None
    return current


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found:
            return found
    return None
