"""YAML input files with line numbers: parse with safe_load-level features only, and report
every problem (syntax, duplicate keys, pydantic validation errors) as
``file:line: field: message``. Every YAML input (constitutions, recipes, serve configs) uses it::

    source = YamlFile(path, path.read_text(), error=MyError)
    try:
        config = MyModel.model_validate(source.data)
    except ValidationError as exc:
        raise MyError(source.validation_problems(exc, MyModel)) from None

A validator may raise ``PydanticCustomError("duplicate_name", ..., {"name", "index", "first"})``
on a list of named items; the problem then points at the second item's ``name``.

Anchors and aliases are allowed, but the work is bounded by the file's size: each node is
walked once, and a document whose alias-expanded size exceeds ``EXPANSION_PER_BYTE`` nodes
per byte of text (a "billion laughs" bomb) or that nests deeper than ``MAX_DEPTH`` is refused
before anything walks the expanded data.
"""

from __future__ import annotations

import difflib
from typing import Any, Union, get_args

import yaml
from pydantic import BaseModel, ValidationError

from cai.errors import InputFileError, Problem

__all__ = ["InputFileError", "Loc", "Problem", "YamlFile", "did_you_mean", "field_path"]

Loc = tuple[Union[str, int], ...]
# libyaml is ~6x faster; both give line marks and accept only safe_load-level YAML
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 100
EXPANSION_PER_BYTE = 20  # expanded nodes allowed per byte of text (plus MIN_EXPANSION)
MIN_EXPANSION = 10_000


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

    def __init__(
        self,
        file: str,
        text: str | bytes,
        error: type[InputFileError] = InputFileError,
        expect: str = "a mapping",
        allow_empty: bool = False,
        any_value: bool = False,
    ):
        self.file, self.exc_type = file, error
        if isinstance(text, bytes):
            text = self._decode(text)
        try:
            try:
                self.root = yaml.compose(text, Loader=_Loader)
            except RecursionError:
                raise self.exc_type([Problem(file, None, "yaml", f"nested deeper than {MAX_DEPTH} levels")]) from None
            if self.root is not None:
                self._check_shape(self.root, max(MIN_EXPANSION, EXPANSION_PER_BYTE * len(text)))
                self._check_duplicate_keys(self.root)
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
        if any_value:
            self.data = self.data if self.root is not None else None
            return
        if self.root is None:
            if allow_empty:
                self.data = {}
                return
            self.error((), f"file is empty; expected {expect}")
        if not isinstance(self.data, dict):
            self.error((), f"expected a mapping at the top level, got {type(self.data).__name__}")

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            problem = Problem(self.file, line, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x})")
            raise self.exc_type([problem]) from None

    @classmethod
    def value(cls, where: str, text: str, error: type[InputFileError] = InputFileError) -> Any:
        """One YAML value from a flag or an environment variable (``--set lr=1e-5``), under the
        same bounds as a file; ``where`` names the flag or variable in errors."""
        try:
            return cls(where, text, error, any_value=True).data
        except InputFileError as exc:  # a one-line value: its line number says nothing
            raise error([Problem(p.file, None, p.field, p.message) for p in exc.problems]) from None

    def _check_shape(self, root: yaml.Node, limit: int) -> None:
        """Depth and alias-expanded size, visiting each node once (iteratively: no recursion)."""
        size: dict[int, int] = {}
        stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
        on_path: set[int] = set()
        while stack:
            node, depth, done = stack.pop()
            if done:
                on_path.discard(id(node))
                total = 1 + sum(size[id(child)] for child in _children(node))
                if total > limit:
                    line = node.start_mark.line + 1
                    raise self.exc_type([Problem(self.file, line, "yaml", "too many alias expansions")])
                size[id(node)] = total
                continue
            if id(node) in size:
                continue
            if depth > MAX_DEPTH:
                raise self.exc_type(
                    [Problem(self.file, node.start_mark.line + 1, "yaml", f"nested deeper than {MAX_DEPTH} levels")]
                )
            if id(node) in on_path:  # a recursive alias (`&a [*a]`): infinitely large
                raise self.exc_type([Problem(self.file, node.start_mark.line + 1, "yaml", "too many alias expansions")])
            on_path.add(id(node))
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in _children(node) if id(child) not in size)

    def _check_duplicate_keys(self, root: yaml.Node) -> None:
        """Each mapping node once (an aliased mapping is checked where it is defined)."""
        seen: set[int] = set()
        problems: list[Problem] = []
        stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
        while stack:
            node, loc = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                first: dict[str, int] = {}
                for key, _value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                        line = key.start_mark.line + 1
                        if key.value in first:
                            problems.append(
                                Problem(
                                    self.file,
                                    line,
                                    field_path((*loc, key.value)),
                                    f"duplicate key (first set at line {first[key.value]})",
                                )
                            )
                        first.setdefault(key.value, line)
                stack.extend((value, (*loc, str(key.value))) for key, value in reversed(node.value))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend((node.value[i], (*loc, i)) for i in reversed(range(len(node.value))))
        if problems:  # the first in the file, as a top-down reader would find it
            raise self.exc_type([min(problems, key=lambda p: p.line or 0)])

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
        typos: set[Loc] = set()
        allowed: dict[int, list[str]] = {}  # error index -> the fields its model has
        for i, err in enumerate(errors):
            if err["type"] == "extra_forbidden":
                owner = _model_at(model, err["loc"][:-1])
                allowed[i] = list(owner.model_fields) if owner else []
                close = difflib.get_close_matches(str(err["loc"][-1]), allowed[i], n=1, cutoff=0.6)
                typos.update((*err["loc"][:-1], name) for name in close)
        problems = []
        for i, err in enumerate(errors):
            loc: Loc = tuple(err["loc"])
            kind, given = err["type"], err.get("input")
            if kind == "missing":
                if loc in typos:
                    continue
                message = "required field is missing"
            elif kind == "extra_forbidden":
                message = f"unknown field {loc[-1]!r}" + did_you_mean(str(loc[-1]), allowed[i])
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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


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
