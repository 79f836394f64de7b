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
MAX_METADATA_DEPTH = 64
# PostgreSQL text and jsonb cannot hold U+0000, so it is refused up front as bad input.
NO_NUL = r"^[^\x00]*$"

Title = Annotated[str, Meta(max_length=500, pattern=NO_NUL, description="A free-form title.")]
ModelName = Annotated[
    str,
    Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]*$", description="Model id."),
]
Tag = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]
Tags = Annotated[list[Tag], Meta(max_length=MAX_TAGS, description="At most 32 tags of 1-64 characters.")]
Metadata = Annotated[dict[str, Any], Meta(description="Free JSON object, at most 16 KiB as compact JSON.")]


def check_json_value(value: Any, what: str, depth: int = 1) -> None:
    """Free JSON that goes into a jsonb column: no U+0000 anywhere (jsonb refuses it), bounded nesting."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"{what} must not be nested more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{what} strings must not contain U+0000")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError(f"{what} keys must not contain U+0000")
            check_json_value(item, what, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json_value(item, what, depth + 1)


def check_metadata(metadata: dict[str, Any] | UnsetType | None) -> None:
    """At most 16 KiB as compact JSON (inclusive), no U+0000 (jsonb refuses it), bounded nesting."""
    if not isinstance(metadata, dict):
        return
    if len(msgspec.json.encode(metadata)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as compact JSON")
    check_json_value(metadata, "metadata")


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
    queued_runs: int = 0
    """Runs waiting in this session's queue (if_busy=enqueue|interrupt)."""


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

    title: Title | UnsetType | None = UNSET
    tags: Tags | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    model: ModelName | UnsetType | None = UNSET
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
