"""One scrub for secrets: configured keys, key-shaped strings, URL credentials."""

from __future__ import annotations

import httpx
import openai

from cai.models.openai_backend import OpenAIChatModel
from cai.models.openai_compat import map_error
from cai.redact import scrub


def test_scrub_removes_configured_keys_and_key_shapes(monkeypatch):
    OpenAIChatModel("m", base_url="http://127.0.0.1:9/v1", api_key="plain-configured-key-77")
    monkeypatch.setenv("SOME_API_KEY", "env-held-secret-99")
    text = scrub(
        "key plain-configured-key-77, env env-held-secret-99, sk-proj-AbC123dEf, "
        "Authorization: Bearer tok.en-1, http://bob:hunter2@llm.internal/v1"
    )
    for secret in ("plain-configured-key-77", "env-held-secret-99", "sk-proj-AbC123dEf", "tok.en-1", "hunter2"):
        assert secret not in text, text
    assert "Authorization: Bearer [redacted]" in text


def test_upstream_error_body_is_scrubbed_in_the_model_error():
    request = httpx.Request("POST", "http://llm.internal/v1/chat/completions")
    response = httpx.Response(500, request=request, json={"error": {"message": "echo: Bearer sk-live-LEAKED12345"}})
    error = map_error(
        openai.InternalServerError("Error code: 500 - echo: Bearer sk-live-LEAKED12345", response=response, body=None)
    )
    assert error.reason == "server_error" and "LEAKED" not in str(error)
