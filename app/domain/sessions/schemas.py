"""Wire shapes of the sessions domain (msgspec structs, snake_case JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

SessionStatus = Literal["idle", "running", "completed", "interrupted", "error"]
PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions"]

MAX_TAGS = 32
MAX_METADATA_BYTES = 16 * 1024

Title = Annotated[str, Meta(max_length=500, description="A free-form title.")]
ModelName = Annotated[
    str,
    Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]*$", description="Model id."),
]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]
Tags = Annotated[list[Tag], Meta(max_length=MAX_TAGS, description="At most 32 tags of 1-64 characters.")]
Metadata = Annotated[dict[str, Any], Meta(description="Free JSON object, at most 16 KiB as compact JSON.")]


def check_metadata(metadata: dict[str, Any] | UnsetType | None) -> None:
    if isinstance(metadata, dict) and len(msgspec.json.encode(metadata)) > MAX_METADATA_BYTES:
        raise ValueError("metadata must be at most 16384 bytes as compact JSON")


class Usage(Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class ActiveRun(Struct):
    run_id: UUID
    instance_id: str
    started_at: datetime


class Session(Struct):
    id: UUID
    title: str | None
    status: SessionStatus
    model: str | None
    permission_mode: str | None
    parent_session_id: UUID | None
    tags: list[str]
    metadata: dict[str, Any]
    total_turns: int
    total_cost_usd: float
    usage: Usage
    version: int
    created_at: datetime
    updated_at: datetime
    last_run_at: datetime | None
    active_run: ActiveRun | None


class CachedSessionHeader(Struct):
    """The parts of a cache entry read before trusting it (the rest decodes as `Session`)."""

    version: int
    owner_key_id: UUID | None = None
    deleted: bool = False


class CachedSession(Session):
    """The cache entry: the Session plus its owner, so a cache hit can enforce ownership."""

    owner_key_id: UUID | None = None


class SessionCreate(Struct, forbid_unknown_fields=True):
    title: Title | None = None
    model: ModelName | None = None
    permission_mode: PermissionMode | None = None
    tags: Tags = msgspec.field(default_factory=list)
    metadata: Metadata = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_metadata(self.metadata)


class SessionUpdate(Struct, forbid_unknown_fields=True):
    """Only the members present are changed; `null` clears title and model."""

    title: Title | None | UnsetType = UNSET
    tags: Tags | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    model: ModelName | None | UnsetType = UNSET
    permission_mode: PermissionMode | UnsetType = UNSET

    def __post_init__(self) -> None:
        check_metadata(self.metadata)


class SessionFork(Struct, forbid_unknown_fields=True):
    title: Title | None = None


class SessionPage(Struct):
    items: list[Session]
    total: int
    limit: int
    offset: int


class SessionMessage(Struct):
    id: str
    run_id: UUID
    event: str
    data: dict[str, Any]
    created_at: datetime


class MessagePage(Struct):
    items: list[SessionMessage]
    total: int
    limit: int
    offset: int
