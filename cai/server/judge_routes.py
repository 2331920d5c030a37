"""HTTP routes for judges: /v1/judge (pointwise and pairwise verdicts) and /v1/reward
(rewards for RL trainers: cai's own shape, OpenRLHF's remote reward shape)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request

from cai.server import serving
from cai.server.errors import APIError
from cai.server.protocol import JudgeRequest, RewardRequest
from cai.server.state import ServerState, require

router = APIRouter()


@router.post("/v1/judge")
async def judge(request: Request, state: Annotated[ServerState, Depends(require("judge"))]) -> dict[str, Any]:
    """Body: one item ({"prompt", "response"} or {"prompt", "a", "b"}) or {"items": [...]}."""
    try:
        raw = await request.json()
    except ValueError as exc:
        raise APIError(400, f"invalid judge request: {exc}", code="invalid_request") from None
    results = await serving.judge(state, JudgeRequest.parse(raw))
    return {"object": "cai.judgement", "results": results}


@router.post("/v1/reward")
async def reward(body: RewardRequest, state: Annotated[ServerState, Depends(require("reward"))]) -> dict[str, Any]:
    """See ``serving.reward`` for the body's fields."""
    return await serving.reward(state, body)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
