"""The FastAPI app factory: the state (upstream model + constitutional wrapper + judges,
``serving.build_state``), the routers, and the guard (auth, limits, metrics) in front.

Nothing in ``cai.server`` imports this module but the package itself and the CLI: routers
read the state through ``cai.server.state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from cai.models.base import ChatModel
from cai.server import judge_routes, routes
from cai.server.config import ServeConfig
from cai.server.errors import AnswerErrors, install_error_handlers
from cai.server.guard import GuardMiddleware
from cai.server.serving import build_state, close_state
from cai.wrapper import ConstitutionalWrapper


def create_app(
    config: ServeConfig,
    *,
    model: ChatModel | None = None,
    wrapper: ConstitutionalWrapper | None = None,
    pairwise: Any = None,
    pointwise: Any = None,
) -> FastAPI:
    """Build the app. ``model``/``wrapper``/judges override what the config would load
    (for tests and for embedding the app in a Python program)."""
    state = build_state(config, model=model, wrapper=wrapper, pairwise=pairwise, pointwise=pointwise)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await close_state(state)

    # no schema endpoint: it would be served without a key
    app = FastAPI(title="cai serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cai = state
    install_error_handlers(app)
    routes.attach_router(app)
    judge_routes.attach_router(app)
    app.add_middleware(AnswerErrors)  # inside GuardMiddleware, which counts the 500
    app.add_middleware(GuardMiddleware, state=state)
    return app
