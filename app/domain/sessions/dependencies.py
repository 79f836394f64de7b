from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.sessions.reader import SessionReader
from app.domain.sessions.services import SessionService


async def provide_session_service(db_session: NamedDependency[AsyncSession], state: State) -> SessionService:
    return SessionService(session=db_session).bind(state["session_infra"])


def provide_session_reader(state: State) -> SessionReader:
    reader: SessionReader = state["session_reader"]
    return reader
