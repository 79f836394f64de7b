"""Valkey key names of one session (`agentapi:{<sid>}:<name>`, the names operators see).
The `{<sid>}` hash tag keeps them in one cluster slot."""

from __future__ import annotations

from uuid import UUID

from app.lib.valkey.keys import global_key, scoped_key


def session_key(session_id: UUID | str) -> str:
    return scoped_key(session_id, "session")


def lock_key(session_id: UUID | str) -> str:
    return scoped_key(session_id, "lock")


def active_key(session_id: UUID | str) -> str:
    return scoped_key(session_id, "active")


def interrupt_key(session_id: UUID | str) -> str:
    return scoped_key(session_id, "interrupt")


def events_key(session_id: UUID | str) -> str:
    return scoped_key(session_id, "events")


# Where control messages are also announced on one node, for operators (`SUBSCRIBE agentapi:control`).
CONTROL_ANNOUNCE_CHANNEL = global_key("control")
