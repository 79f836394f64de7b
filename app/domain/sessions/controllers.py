from __future__ import annotations

import re
from typing import Annotated
from uuid import UUID

from litestar import Controller, Response, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from app.domain.idempotency import IDEMPOTENT_OPT, IdempotencyKey
from app.domain.keys.principal import AuthedRequest
from app.domain.sessions.creator import SessionCreator
from app.domain.sessions.dependencies import provide_session_service
from app.domain.sessions.errors import invalid_if_match
from app.domain.sessions.read_shortcut import cache_lookup_of
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
from app.lib.di import AppDependency
from app.lib.logging import bind_session_from_path
from app.lib.problems import problem_responses

# Below Postgres's bigint (a larger OFFSET cannot even be sent to the database) and exact as a JSON number, so
# the OpenAPI `maximum` means what the validator enforces (2**63 - 1 would be rounded up as a double).
MAX_OFFSET = 2**53


def with_etag(session: Session, status_code: int = 200) -> Response[Session]:
    return Response(session, status_code=status_code, headers={"ETag": f'"{session.version}"'})


# One member of an If-Match list (RFC 9110 §13.1.1): `"<opaque>"` or weak `W/"<opaque>"`, then a comma or the end.
_ENTITY_TAG = re.compile(r'\s*(?:W/)?"([^"]*)"\s*(?:,|$)')


def parse_if_match(value: str | None) -> frozenset[int] | None:
    """The session versions an `If-Match` header accepts; None for none sent or `*` (any version).

    A list matches when any member does (`"2", "9"`). Tags compare exactly, as strings: the ETag of version 5 is
    `"5"`, so `"05"` matches no version (an empty set: 412). Weak tags (`W/"5"`) match too, although RFC 9110 asks
    for strong comparison here: nginx with `gzip on` turns the strong ETag of a response it compresses into a weak
    one, so a client behind it only ever sees, and echoes, `W/"5"`. A member that is not a quoted run of ASCII
    digits (this API's only ETags) is a malformed header: 400."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip()
    versions: set[int] = set()
    position, members = 0, 0
    while position < len(text):
        if text[position] in " \t,":  # empty list members are allowed (RFC 9110 §5.6.1)
            position += 1
            continue
        match = _ENTITY_TAG.match(text, position)
        # ASCII digits only: str.isdigit() also accepts e.g. "²", which int() then refuses.
        if match is None or not (match.group(1).isascii() and match.group(1).isdigit()):
            raise invalid_if_match('If-Match must be "*" or a list of session versions such as "3" (or W/"3").')
        members += 1
        tag = match.group(1)
        if str(int(tag)) == tag:
            versions.add(int(tag))
        position = match.end()
    if members == 0:
        raise invalid_if_match("If-Match names no entity tag.")
    return frozenset(versions)


class SessionController(Controller):
    path = "/api/v1/sessions"
    tags = ["Sessions"]
    before_request = staticmethod(bind_session_from_path)
    dependencies = {"session_service": Provide(provide_session_service)}

    @post(
        "/", status_code=201, summary="Create a session", responses=problem_responses(422), opt={IDEMPOTENT_OPT: True}
    )
    async def create_session(
        self,
        request: AuthedRequest,
        session_creator: AppDependency[SessionCreator],
        data: JSONBody[SessionCreate | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Session]:
        # Every member is optional, so no body at all is an empty session, as `{}` is.
        body = data if data is not None else SessionCreate()
        return with_etag(await session_creator.create(request.user.key_id, body), 201)

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
        self, request: AuthedRequest, session_reader: AppDependency[SessionReader], session_id: FromPath[UUID]
    ) -> Response[Session]:
        looked_up = cache_lookup_of(request.scope)
        return with_etag(await session_reader.get(session_id, request.user.key_id, looked_up))

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
        if_match: Annotated[
            str | None,
            HeaderParameter(
                name="If-Match",
                required=False,
                description='`*`, or one or more ETags (`"3"`, `"2", "9"`; weak `W/"3"` too): 412 unless one matches.',
            ),
        ] = None,
    ) -> Response[Session]:
        session = await session_service.update_session(
            session_id, request.user.key_id, data, expected_versions=parse_if_match(if_match)
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
