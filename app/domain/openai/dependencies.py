"""Request-scoped provider of the OpenAI-compatible domain; its collaborators are app-level dependencies
(`app.components.AppComponents.dependencies`)."""

from __future__ import annotations

from app.domain.openai.runs_port import RunsPort
from app.domain.openai.services import ModelCatalog, OpenAIService
from app.domain.runs.services import RunService
from app.domain.sessions.reader import SessionReader
from app.lib.di import AppDependency


def provide_openai_service(
    run_service: AppDependency[RunService],
    session_reader: AppDependency[SessionReader],
    model_catalog: AppDependency[ModelCatalog],
) -> OpenAIService:
    return OpenAIService(RunsPort(run_service), model_catalog, session_reader)
