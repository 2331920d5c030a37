"""HTTP routes: OpenAI chat completions and models, health, metrics (judge and reward
routes: ``judge_routes``). Parsing is the protocol's, the work is ``serving``'s; this module
only maps them onto HTTP."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cai.server import serving
from cai.server.protocol import ChatRequest, completion_json, fingerprint, models_body, new_id, sse_chunks
from cai.server.state import ServerState, get_state, require

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, state: Annotated[ServerState, Depends(require("chat"))]) -> Response:
    result = await serving.chat(state, body)
    wrapper, name = state.wrapper, state.config.served_model_name
    fp = fingerprint(wrapper.spec, wrapper.mode, wrapper.constitution.id)
    cid = new_id()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = sse_chunks(cid, name, result.choices, result.usage, fp, result.trace, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    body_bytes = completion_json(cid, name, result.choices, result.usage, fp, result.trace)
    return Response(body_bytes, media_type="application/json")


@router.get("/v1/models")
async def list_models(state: Annotated[ServerState, Depends(require("models"))]) -> dict[str, Any]:
    return models_body(state.config.served_model_name)


@router.get("/healthz")
async def healthz(state: Annotated[ServerState, Depends(get_state)]) -> dict[str, Any]:
    return {
        "status": "ok",
        "model": state.config.served_model_name,
        "upstream": state.wrapper.model.spec,
        "mode": state.wrapper.mode,
        "in_flight": state.in_flight,
    }


@router.get("/metrics")
async def metrics(state: Annotated[ServerState, Depends(require("metrics"))]) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
