"""Moved to ``cai.testing.stub_openai_server`` (test doubles are library code); kept so that
``from tests.stub_openai_server import StubOpenAIServer`` and the shell entry point work."""

from cai.testing.stub_openai_server import StubOpenAIServer, main  # noqa: F401

if __name__ == "__main__":
    main()
