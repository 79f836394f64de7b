from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency

from app.domain.openai.runs_port import RunsPort
from app.domain.openai.services import ModelCatalog, OpenAIService
from app.domain.runs.services import RunService
from app.domain.sessions.services import SessionService


def provide_model_catalog(state: State) -> ModelCatalog:
    manager = state["run_manager"]
    return ModelCatalog(state["settings"], manager.backend)


async def provide_openai_service(
    run_service: NamedDependency[RunService], session_service: NamedDependency[SessionService], state: State
) -> OpenAIService:
    return OpenAIService(RunsPort(run_service), provide_model_catalog(state), session_service)
