"""Test doubles that tests, benchmarks and users' own tests share:

- ``ScriptedModel``: a ChatModel that answers from a script (``cai.models.scripted``);
- ``StubOpenAIServer``: a fault-injecting OpenAI-compatible HTTP server
  (``cai.testing.stub_openai_server``);
- ``VLLMServer`` / ``ExternalVLLMServer``: a real vLLM server on loopback, or one already
  running (``cai.testing.vllm_server``).

None of them imports torch, vLLM or an HTTP framework at import time.
"""

from cai.models.scripted import ScriptedModel
from cai.testing.stub_openai_server import StubOpenAIServer
from cai.testing.vllm_server import ExternalVLLMServer, VLLMServer, VLLMServerError

__all__ = ["ExternalVLLMServer", "ScriptedModel", "StubOpenAIServer", "VLLMServer", "VLLMServerError"]
