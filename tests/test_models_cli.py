"""`cai models ...` commands (the chat command against the stub OpenAI server)."""

from __future__ import annotations

from typer.testing import CliRunner

from cai.cli import app
from cai.testing import StubOpenAIServer

runner = CliRunner()


def test_models_list_shows_every_builtin_backend() -> None:
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for name in ("embedded", "hf", "vllm", "openai", "litellm"):
        assert name in result.output


def test_models_chat_prints_answer_usage_and_logprobs() -> None:
    with StubOpenAIServer(reply="four") as stub:
        result = runner.invoke(
            app, ["models", "chat", "openai:stub", "What is 2+2?", "--base-url", stub.base_url, "--logprobs", "2"]
        )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "four"
    assert "prompt 3 + completion 1 tokens" in result.output
    assert "'alt1'" in result.output


def test_models_chat_reports_typed_errors() -> None:
    with StubOpenAIServer() as stub:
        stub.inject("401")
        result = runner.invoke(app, ["models", "chat", "openai:stub", "hi", "--base-url", stub.base_url])
    assert result.exit_code == 1
    assert "error (auth)" in result.output
    assert "Traceback" not in result.output


def test_models_chat_bad_spec_is_bad_input() -> None:
    result = runner.invoke(app, ["models", "chat", "nosuchbackend:x", "hi"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "nosuchbackend" in result.stderr


def test_export_embedded_refuses_a_foreign_folder_as_bad_input(tmp_path, monkeypatch) -> None:
    cache = tmp_path.parent / f"{tmp_path.name}-cache"
    monkeypatch.setenv("CAI_CACHE_DIR", str(cache))  # empty: a check after the export would build it
    (tmp_path / "mine.txt").write_text("x")
    result = runner.invoke(app, ["models", "export-embedded", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert (
        result.stderr
        == f"error: {tmp_path.resolve()} exists and is not an embedded-model export; choose an empty dir\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    assert not cache.exists()  # refused before the minute-long first export
