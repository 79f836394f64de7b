from __future__ import annotations

from litestar.datastructures import State

from app.domain.runs.services import RunService


def provide_run_service(state: State) -> RunService:
    """One per app: the service holds no per-request state (each store call opens its own transaction)."""
    service: RunService = state["run_service"]
    return service
