"""What every router reads: the server's state (``ServerState``, on ``app.state.cai``) and
the dependencies that hand it to a route (``get_state``, ``require``). Routers import this
module, never ``cai.server.app``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from cai.server.auth import KeyStore, key_problem
from cai.server.config import ServeConfig
from cai.server.errors import APIError
from cai.server.metrics import Metrics
from cai.server.reward_queue import RewardQueue
from cai.wrapper import ConstitutionalWrapper


@dataclass
class ServerState:
    config: ServeConfig
    wrapper: ConstitutionalWrapper
    keys: KeyStore
    metrics: Metrics
    pairwise: Any = None  # judges.PairwiseJudge for /v1/judge
    pointwise: Any = None  # judges.PointwiseJudge for /v1/judge and /v1/reward
    rewards: RewardQueue | None = None  # batches /v1/reward over the pointwise judge
    in_flight: int = 0

    def auth_problem(self, route: str, header: str) -> APIError | None:
        """``key_problem`` for this server's keys (an APIError, or None when allowed)."""
        return key_problem(self.keys, self.config.auth, route, header)


def get_state(request: Request) -> ServerState:
    """Dependency: the state of the app serving ``request``."""
    return request.app.state.cai


def require(route: str) -> Callable[[Request], ServerState]:
    """Dependency: the state, once the bearer key may call ``route`` (401 without or with an
    invalid key, 403 not allowed); /v1 routes are also checked by ``GuardMiddleware`` before
    their body is read."""

    def check(request: Request) -> ServerState:
        state = get_state(request)
        problem = state.auth_problem(route, request.headers.get("authorization", ""))
        if problem is not None:
            state.metrics.rejected.labels("forbidden" if problem.status == 403 else "unauthenticated").inc()
            raise problem
        return state

    return check
