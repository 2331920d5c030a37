"""Model spec strings -> ChatModel instances.

A spec is ``backend:model`` (``embedded`` alone is allowed). Built-in backends are imported
lazily so that e.g. vLLM is only imported when a ``vllm:`` spec is used. Third-party backends
register a factory ``(model: str, **options) -> ChatModel`` under the entry point group
``cai.models``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from cai.errors import ModelSpecError
from cai.models.base import ChatModel

ENTRY_POINT_GROUP = "cai.models"

# backend name -> "module:factory"
BUILTIN_BACKENDS: dict[str, str] = {
    "embedded": "cai.models.embedded:load_embedded",
    "hf": "cai.models.hf:load_hf",
    "vllm": "cai.models.vllm_inproc:load_vllm",
    "openai": "cai.models.openai_backend:load_openai",
    "litellm": "cai.models.litellm_backend:load_litellm",
    "scripted": "cai.models.registry:load_scripted",
}
# options that make load_model build a RayPool of replicas (cai.models.ray_pool)
POOL_TRIGGERS = ("replicas", "ray", "base_urls", "replica_options")


__all__ = ["ModelSpecError", "available_backends", "load_model", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``backend:model``. ``embedded`` needs no model part."""
    spec = spec.strip()
    if not spec:
        raise ModelSpecError("empty model spec; expected e.g. 'embedded', 'hf:PATH', 'openai:MODEL'")
    backend, sep, model = spec.partition(":")
    if not sep:
        if backend == "embedded":
            return "embedded", ""
        raise ModelSpecError(
            f"model spec {spec!r} has no backend; expected 'BACKEND:MODEL' with BACKEND one of "
            f"{', '.join(available_backends())}"
        )
    return backend, model


def available_backends() -> list[str]:
    names = set(BUILTIN_BACKENDS)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _factory(backend: str) -> Callable[..., ChatModel]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == backend:
            return ep.load()
    target = BUILTIN_BACKENDS.get(backend)
    if target is None:
        raise ModelSpecError(f"unknown model backend {backend!r}; known: {', '.join(available_backends())}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_scripted(model: str, **options: Any) -> ChatModel:
    """``scripted:MODULE:FUNCTION``: a ``ScriptedModel`` driven by ``FUNCTION(messages,
    params) -> str | Completion`` (e.g. to test a pipeline, or a Ray cluster, without a model);
    ``delay`` (seconds per call) is its one option."""
    from cai.models.scripted import ScriptedModel

    module, sep, attr = model.rpartition(":")
    if not sep or not module or not attr:
        raise ModelSpecError(f"scripted:{model}: expected 'scripted:MODULE:FUNCTION'")
    try:
        script = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelSpecError(f"scripted:{model}: cannot import {attr!r} from {module!r}: {exc}") from None
    return ScriptedModel(script, spec=f"scripted:{model}", **options)


def load_model(spec: str | ChatModel, **options: Any) -> ChatModel:
    """Build a ChatModel from a spec string (a ChatModel passes through unchanged).

    With any of the options ``replicas``, ``ray``, ``base_urls``, ``replica_options`` the
    result is a ``RayPool`` (``cai.models.ray_pool.load_pool``): that many replicas of the
    model, each built with this function in a Ray actor's process."""
    if isinstance(spec, ChatModel):
        return spec
    if any(options.get(k) is not None for k in POOL_TRIGGERS):
        from cai.models.ray_pool import load_pool

        parse_spec(spec)  # a bad spec fails here, before a cluster starts
        return load_pool(spec.strip(), **options)
    backend, model = parse_spec(spec)
    chat_model = _factory(backend)(model, **options)
    if not chat_model.spec:
        chat_model.spec = spec
    return chat_model
