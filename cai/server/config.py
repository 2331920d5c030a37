"""`cai serve` configuration: one YAML file that maps onto ``ServeConfig``, then environment
variables ``CAI_SERVE_<FIELD>`` (nested with ``__``, e.g. ``CAI_SERVE_LIMITS__MAX_CONCURRENCY=8``),
then CLI flags. Errors name the file, line and field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cai.errors import ConfigError
from cai.yamlfile import YamlFile

ENV_PREFIX = "CAI_SERVE_"
ROUTES = ("chat", "models", "judge", "reward", "metrics")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    spec: str = "embedded"  # any cai model spec
    options: dict[str, Any] = {}  # passed to load_model (base_url, max_concurrency, ...)


class WrapperConfig(_Strict):
    constitution: str = "harmless"
    mode: Literal["off", "always", "on_flag", "block"] = "always"
    revisions: int | None = Field(default=None, ge=0)  # None: the constitution's default
    few_shot: bool = True
    seed: int | None = None
    # violation judges gating on_flag/block: judge specs for judges.load_judge
    judges: list[str] = []
    judge_options: dict[str, Any] = {}
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    refusal: str = "I can't help with that request."

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


class JudgeEndpointConfig(_Strict):
    """Judges behind /v1/judge and /v1/reward (judges.load_judge specs); unset -> 404."""

    pairwise: str | None = None
    pointwise: str | None = None
    options: dict[str, Any] = {}
    # OpenRLHF needs a number for every item: what an unscored (unparseable/failed) item gets;
    # None: the judge's worst reward (a judge without a known scale then needs a value)
    unscored_reward: float | None = None
    concurrency: int = Field(default=16, ge=1)
    # /v1/reward items waiting for the judge; more -> 503 (single-item requests are batched)
    max_queue: int = Field(default=4096, ge=1)
    # a local HF tokenizer folder whose chat template OpenRLHF's templated 'query' is parsed
    # with; None: the common ChatML / Llama / Gemma / Mistral markers are recognised
    tokenizer: str | None = None


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    request_timeout_s: float = Field(default=120.0, gt=0)  # model work of one request
    # slow clients: headers, then the body, must arrive within these; idle keep-alive closes
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    keep_alive_s: float = Field(default=5.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)  # requests in flight; more -> 429
    max_batch: int = Field(default=512, ge=1)  # items per /v1/judge or /v1/reward request


class AuthConfig(_Strict):
    # file of keys: one per line "KEY" (all routes) or "KEY route,route"; '#' comments
    keys_file: str | None = None
    # same syntax inline, ';'-separated (usually from env CAI_SERVE_AUTH__KEYS)
    keys: str | None = None
    allow_unauthenticated: bool = False  # required to run with no keys at all
    public_metrics: bool = True  # /metrics without a key (Prometheus scrapers)


class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    served_model_name: str = "cai"
    model: ModelConfig = ModelConfig()
    wrapper: WrapperConfig = WrapperConfig()
    judge: JudgeEndpointConfig = JudgeEndpointConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    log_level: str = "info"

    @model_validator(mode="after")
    def _needs_keys(self) -> ServeConfig:
        a = self.auth
        if not (a.keys_file or a.keys or a.allow_unauthenticated):
            raise ValueError(
                "no API keys configured: set auth.keys_file, auth.keys (or env "
                "CAI_SERVE_AUTH__KEYS), or auth.allow_unauthenticated: true"
            )
        return self


def _line(source: YamlFile | None, loc: tuple[str, ...]) -> int | None:
    """Line of the longest prefix of ``loc`` present in the file (None: not from the file)."""
    if source is None or not isinstance(source.root, yaml.MappingNode):
        return None
    if not any(k.value == loc[0] for k, _ in source.root.value if loc):
        return None
    return source.line_of(loc)


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {key} is not a mapping")
    data[path[-1]] = value


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``CAI_SERVE_A__B=value`` -> {"a": {"b": value}}; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for name, raw in (os.environ if environ is None else environ).items():
        if name.startswith(ENV_PREFIX):
            path = name[len(ENV_PREFIX) :].lower().split("__")
            _set_path(out, path, YamlFile.value(f"environment variable {name}", raw, ConfigError) if raw else raw)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> ServeConfig:
    """YAML file (optional) < environment < ``overrides`` (dotted keys or nested dicts)."""
    data: dict[str, Any] = {}
    source: YamlFile | None = None
    where = "<defaults>"
    if path is not None:
        where = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
        source = YamlFile(where, raw, error=ConfigError, expect="a mapping of config fields", allow_empty=True)
        data = source.data
    data = _merge(data, env_overrides(environ))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, key.split("."), value)
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            line = _line(source, loc)
            field = ".".join(loc) or "(top level)"
            prefix = f"{where}:{line}" if line else where
            problems.append(f"{prefix}: field {field}: {err['msg']}")
        raise ConfigError("invalid serve config:\n  " + "\n  ".join(problems)) from None
