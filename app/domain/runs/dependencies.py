from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency

from app.domain.runs.services import RunService
from app.domain.sessions.services import SessionService


async def provide_run_service(session_service: NamedDependency[SessionService], state: State) -> RunService:
    return RunService(session_service, state["run_manager"], state["event_follower"])
