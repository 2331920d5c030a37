"""One async chat interface over every backend. See ``cai.models.base``."""

from cai.models.base import (
    Capabilities,
    ChatModel,
    Completion,
    ContextLengthError,
    GenParams,
    Message,
    ModelError,
    ModelWrapper,
    PermanentModelError,
    TokenLogprob,
    TransientModelError,
    Usage,
    call_key,
)
from cai.models.registry import ModelSpecError, available_backends, load_model, parse_spec
from cai.models.scripted import ScriptedModel

__all__ = [
    "Capabilities",
    "ChatModel",
    "Completion",
    "ContextLengthError",
    "GenParams",
    "Message",
    "ModelError",
    "ModelSpecError",
    "ModelWrapper",
    "PermanentModelError",
    "ScriptedModel",
    "TokenLogprob",
    "TransientModelError",
    "Usage",
    "available_backends",
    "call_key",
    "load_model",
    "parse_spec",
]
