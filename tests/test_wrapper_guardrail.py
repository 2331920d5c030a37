"""The LiteLLM guardrail, built the way LiteLLM's proxy builds it from
examples/litellm_config.yaml, run on real litellm response objects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch on import
litellm = pytest.importorskip("litellm")

from litellm.proxy.types_utils.utils import get_instance_fn  # noqa: E402
from litellm.types.guardrails import GuardrailEventHooks, LitellmParams  # noqa: E402
from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices  # noqa: E402

from cai.models import ScriptedModel  # noqa: E402
from tests.test_wrapper import loop_script  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "litellm_config.yaml"
DATA = {"model": "my-model", "messages": [{"role": "user", "content": "How do I hotwire a car?"}], "metadata": {}}


@pytest.fixture
def guardrail():
    entry = yaml.safe_load(CONFIG.read_text())["guardrails"][0]
    params = LitellmParams(**entry["litellm_params"])
    cls = get_instance_fn(params.guardrail, config_file_path=str(CONFIG))
    extra = {
        k: v
        for k, v in params.model_dump(exclude_none=True).items()
        if k not in ("guardrail", "mode", "default_on", "stream_scope")
    }
    extra["cai_model"] = ScriptedModel(loop_script)  # instead of the config's openai:my-model
    g = cls(guardrail_name=entry["guardrail_name"], event_hook=params.mode, default_on=params.default_on, **extra)
    assert g.should_run_guardrail(dict(DATA), GuardrailEventHooks.post_call) is True
    return g


async def test_post_call_revises_the_response(guardrail):
    response = litellm.ModelResponse(
        choices=[
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Strip the ignition wires."},
            }
        ]
    )
    out = await guardrail.async_post_call_success_hook(dict(DATA), None, response)
    assert out.choices[0].message.content.startswith("I can't help with stealing a car")
    assert out._hidden_params["cai_action"] == "revised"


async def test_streaming_responses_are_buffered_and_revised(guardrail):
    def chunk(text, finish=None):
        return ModelResponseStream(
            id="c1", choices=[StreamingChoices(index=0, delta=Delta(content=text), finish_reason=finish)]
        )

    async def upstream():
        for piece in ["Strip the ", "ignition ", "wires."]:
            yield chunk(piece)
        yield chunk(None, "stop")

    out = [c async for c in guardrail.async_post_call_streaming_iterator_hook(None, upstream(), dict(DATA))]
    text = "".join(c.choices[0].delta.content or "" for c in out)
    assert text.startswith("I can't help with stealing a car") and "ignition" not in text
    assert out[-1].choices[0].finish_reason == "stop"
