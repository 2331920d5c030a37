"""Test doubles that tests and benchmarks share: the fault-injecting OpenAI-compatible stub
server (``cai.testing.stub_openai_server``)."""
