"""Every error cai raises on purpose, in one family under ``CaiError``::

    CaiError                      exit_code 1: something went wrong while running
    ├── InputFileError            exit_code 2: bad input; ``.problems`` name file, line, field
    │   ├── InputError            a prompt file or one record in it (cai.inputs)
    │   ├── ConstitutionError     a constitution file (cai.constitution)
    │   ├── ConfigError           a serve config: file, environment or flag (cai.server.config)
    │   ├── RecipeError           a training recipe (training.recipes)
    │   ├── DataError             training data (training.data)
    │   ├── ModelSpecError        a ``backend:model`` spec (cai.models.registry)
    │   ├── JudgeSpecError        a judge spec (judges.registry)
    │   ├── ConfigMismatchError   a run directory that holds a run with another config (cai.store)
    │   ├── ReportError           a folder ``cai report`` cannot read (cai.report)
    │   └── NotARunError          a folder that is not a cai run directory (cai.stats)
    ├── LaunchError               exit_code 2: a multi-process launch that cannot train
    │                             (training.distributed)
    ├── RunLockedError            another process is running in the run directory (cai.store)
    ├── ModelError                a backend call failed; ``.reason``, ``.retry_after``
    │   ├── TransientModelError   worth retrying: rate limit, 5xx, timeout, dropped connection
    │   ├── PermanentModelError   retrying will not help: bad request, auth, unknown model
    │   │   └── ContextLengthError
    │   └── RevisionFailed        the critique/revision loop could not finish (cai.wrapper)
    └── RewardServerError         the reward server refused or kept failing; ``.status``

Each class also keeps the builtin base it had before the family existed (``ValueError`` for
bad input, ``FileNotFoundError`` for ``NotARunError``, ``RuntimeError`` for
``RunLockedError`` and ``RewardServerError``), so ``except ValueError`` still catches them.
``exit_code`` is what the ``cai`` command exits with when the error escapes a command
(``cai.cli``). HTTP errors of the server (``cai.server.errors.APIError``) are not part of it:
they become response bodies, never exit codes.

This module imports only the standard library, so any module may import it.
"""

import dataclasses

__all__ = [
    "CaiError",
    "ConfigError",
    "ConfigMismatchError",
    "ConstitutionError",
    "ContextLengthError",
    "DataError",
    "InputError",
    "InputFileError",
    "JudgeSpecError",
    "LaunchError",
    "ModelError",
    "ModelSpecError",
    "NotARunError",
    "PermanentModelError",
    "Problem",
    "RecipeError",
    "ReportError",
    "RevisionFailed",
    "RewardServerError",
    "RunLockedError",
    "TransientModelError",
]


class CaiError(Exception):
    """Base of every error cai raises on purpose; ``exit_code`` is the CLI's exit status."""

    exit_code = 1


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem in an input file; ``line`` is None where the input has no lines (a flag)."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


# -- bad input -------------------------------------------------------------------------


class InputFileError(CaiError, ValueError):
    """One or more problems in an input file, each naming file, line and field."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | str):
        """``problems``, or one message that already names its file (or flag) and line
        (``.problems`` is then empty)."""
        self.problems = [] if isinstance(problems, str) else problems
        super().__init__(problems if isinstance(problems, str) else "\n".join(str(p) for p in problems))


class InputError(InputFileError):
    """A prompt file (or one record in it) cannot be used."""


class ConstitutionError(InputFileError):
    """One or more problems in a constitution file, each naming file, line and field
    (``.problems``: list of Problem(file, line, field, message))."""


class ConfigError(InputFileError):
    """A serve config (file, environment or flag) that cannot be used."""


class RecipeError(InputFileError):
    """A recipe that cannot be used; the message names file, line and field."""


class DataError(InputFileError):
    """Bad training data; the message names file, line and field."""


class ModelSpecError(InputFileError):
    """A model spec (``backend:model``) that names no known backend or is malformed."""


class JudgeSpecError(InputFileError):
    """A judge spec (``kind:model`` or ``rules:...``) that cannot be built."""


class ConfigMismatchError(InputFileError):
    """The run directory holds a run with a different config."""


class ReportError(InputFileError):
    """A folder ``cai report`` cannot read (missing, not a run, a broken trainer log)."""


class NotARunError(InputFileError, FileNotFoundError):
    """The folder is not a cai run directory (it has no run database)."""


class LaunchError(CaiError, ValueError):
    """A multi-process launch that cannot train correctly; the message says how to launch."""

    exit_code = 2  # a usage error, like bad input


# -- runtime ---------------------------------------------------------------------------


class RunLockedError(CaiError, RuntimeError):
    """Another process is running in this run directory."""


class ModelError(CaiError):
    """Base of every error a backend raises. ``reason`` is a short machine-readable tag."""

    reason = "model_error"

    def __init__(self, message: str, *, reason: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        if reason:
            self.reason = reason
        self.retry_after = retry_after


class TransientModelError(ModelError):
    """Worth retrying: rate limit, 5xx, timeout, dropped connection."""

    reason = "transient"


class PermanentModelError(ModelError):
    """Retrying will not help: bad request, auth, unknown model."""

    reason = "permanent"


class ContextLengthError(PermanentModelError):
    reason = "context_length"


class RevisionFailed(ModelError):
    """The critique/revision loop could not finish; the answer is withheld, not passed through."""

    reason = "revision_failed"


class RewardServerError(CaiError, RuntimeError):
    """The cai reward server refused a batch (``status``) or kept failing (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
