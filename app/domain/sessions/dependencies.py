"""Request-scoped providers of the sessions domain (the app-level objects they use come from
`app.components.AppComponents.dependencies`)."""

from __future__ import annotations

from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.sessions.services import SessionService, SessionServiceFactory
from app.lib.di import AppDependency


async def provide_session_service(
    db_session: NamedDependency[AsyncSession], session_services: AppDependency[SessionServiceFactory]
) -> SessionService:
    return session_services(db_session)
