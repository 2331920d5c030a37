"""Moved to ``cai.testing.vllm_server`` (test doubles are library code); kept so that
``from tests.vllm_server import VLLMServer`` in tests/conftest.py and older scripts works."""

from cai.testing.vllm_server import ExternalVLLMServer, VLLMServer, VLLMServerError, free_port  # noqa: F401
