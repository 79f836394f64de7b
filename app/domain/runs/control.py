"""The messages one instance sends to the instance that owns a run, over the control channel: one tagged
union, encoded and decoded here only."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import msgspec

from app.agents.base import AnswerOutcome


class Interrupt(msgspec.Struct, tag="interrupt", kw_only=True):
    session_id: UUID
    run_id: UUID


class SetPermissionMode(msgspec.Struct, tag="permission_mode", kw_only=True):
    session_id: UUID
    run_id: UUID
    permission_mode: str


class DeliverAnswer(msgspec.Struct, tag="answer", kw_only=True):
    session_id: UUID
    run_id: UUID
    answer: str
    question_id: str | None
    reply_key: str
    """Where the owner pushes its `AnswerReply`."""


ControlMessage = Interrupt | SetPermissionMode | DeliverAnswer


class AnswerReply(msgspec.Struct):
    outcome: AnswerOutcome | Literal["not_running"]


_decoder = msgspec.json.Decoder(ControlMessage)
_reply_decoder = msgspec.json.Decoder(AnswerReply)


def encode(message: ControlMessage | AnswerReply) -> bytes:
    return msgspec.json.encode(message)


def decode(raw: bytes) -> ControlMessage | None:
    """None for anything that is not one of ours (another version's message, garbage)."""
    try:
        message: ControlMessage = _decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    return message


def decode_reply(raw: bytes) -> AnswerReply | None:
    try:
        return _reply_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
