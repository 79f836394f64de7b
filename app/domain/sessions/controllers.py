from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from app.domain.idempotency import IDEMPOTENT_OPT, IdempotencyKey
from app.domain.keys.auth import Principal
from app.domain.sessions.dependencies import provide_session_reader, provide_session_service
from app.domain.sessions.reader import SessionReader
from app.domain.sessions.schemas import (
    MAX_TAGS,
    MessagePage,
    Session,
    SessionCreate,
    SessionFork,
    SessionPage,
    SessionStatus,
    SessionUpdate,
    Tag,
)
from app.domain.sessions.services import SessionService
from app.lib.logging import bind_session_from_path
from app.lib.problems import ApiError, problem_responses

AuthedRequest = Request[Principal, Any, State]
# Below Postgres's bigint (a larger OFFSET cannot even be sent to the database) and exact as a JSON number, so
# the OpenAPI `maximum` means what the validator enforces (2**63 - 1 would be rounded up as a double).
MAX_OFFSET = 2**53


def with_etag(session: Session, status_code: int = 200) -> Response[Session]:
    return Response(session, status_code=status_code, headers={"ETag": f'"{session.version}"'})


def parse_if_match(value: str | None) -> int | None:
    if value is None or value.strip() == "*":
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    # ASCII digits only: str.isdigit() also accepts e.g. "²", which int() then refuses.
    if not (text.isascii() and text.isdigit()):
        raise ApiError(
            400, "VALIDATION_ERROR", 'If-Match must be a session version such as "3".', title="Invalid If-Match"
        )
    return int(text)


class SessionController(Controller):
    path = "/api/v1/sessions"
    tags = ["Sessions"]
    before_request = staticmethod(bind_session_from_path)
    dependencies = {
        "session_service": Provide(provide_session_service),
        "session_reader": Provide(provide_session_reader, sync_to_thread=False),
    }

    @post(
        "/", status_code=201, summary="Create a session", responses=problem_responses(422), opt={IDEMPOTENT_OPT: True}
    )
    async def create_session(
        self,
        request: AuthedRequest,
        session_service: NamedDependency[SessionService],
        data: JSONBody[SessionCreate | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Session]:
        # Every member is optional, so no body at all is an empty session, as `{}` is.
        body = data if data is not None else SessionCreate()
        return with_etag(await session_service.create_session(request.user.key_id, body), 201)

    @get("/", summary="List sessions, newest first", responses=problem_responses())
    async def list_sessions(
        self,
        request: AuthedRequest,
        session_service: NamedDependency[SessionService],
        status: Annotated[
            list[SessionStatus] | None,
            QueryParameter(max_items=5, description="Repeatable: sessions in any of these states."),
        ] = None,
        tag: Annotated[
            list[Tag] | None,
            QueryParameter(max_items=MAX_TAGS, description="Repeatable: sessions carrying all of these tags."),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> SessionPage:
        return await session_service.list_sessions(
            request.user.key_id, statuses=status or [], tags=tag or [], limit=limit, offset=offset
        )

    @get("/{session_id:uuid}", summary="Get a session (cache-aside)", responses=problem_responses(404))
    async def get_session(
        self, request: AuthedRequest, session_reader: NamedDependency[SessionReader], session_id: FromPath[UUID]
    ) -> Response[Session]:
        return with_etag(await session_reader.get(session_id, request.user.key_id))

    @patch(
        "/{session_id:uuid}",
        summary="Update a session (If-Match optional)",
        responses=problem_responses(404, 409, 412, 422),
    )
    async def update_session(
        self,
        request: AuthedRequest,
        session_service: NamedDependency[SessionService],
        session_id: FromPath[UUID],
        data: JSONBody[SessionUpdate],
        if_match: Annotated[str | None, HeaderParameter(name="If-Match", required=False)] = None,
    ) -> Response[Session]:
        session = await session_service.update_session(
            session_id, request.user.key_id, data, expected_version=parse_if_match(if_match)
        )
        return with_etag(session)

    @delete("/{session_id:uuid}", status_code=204, summary="Delete a session", responses=problem_responses(404, 409))
    async def delete_session(
        self, request: AuthedRequest, session_service: NamedDependency[SessionService], session_id: FromPath[UUID]
    ) -> None:
        await session_service.delete_session(session_id, request.user.key_id)

    @post(
        "/{session_id:uuid}/fork",
        status_code=201,
        summary="Fork a session",
        responses=problem_responses(404, 422),
        opt={IDEMPOTENT_OPT: True},
    )
    async def fork_session(
        self,
        request: AuthedRequest,
        session_service: NamedDependency[SessionService],
        session_id: FromPath[UUID],
        data: JSONBody[SessionFork | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Session]:
        title = data.title if data is not None else None
        return with_etag(await session_service.fork_session(session_id, request.user.key_id, title), 201)

    @get("/{session_id:uuid}/messages", summary="Persisted events, oldest first", responses=problem_responses(404))
    async def list_messages(
        self,
        request: AuthedRequest,
        session_service: NamedDependency[SessionService],
        session_id: FromPath[UUID],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> MessagePage:
        return await session_service.list_messages(session_id, request.user.key_id, limit=limit, offset=offset)
