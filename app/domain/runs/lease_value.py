"""The run lease value stored at `agentapi:{<sid>}:active`: which run holds the session, on which instance,
since when."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec


class LeaseValue(msgspec.Struct):
    run_id: UUID
    instance_id: str
    started_at: datetime


_decoder = msgspec.json.Decoder(LeaseValue)


def encode_lease(value: LeaseValue) -> bytes:
    return msgspec.json.encode(value)


def decode_lease(raw: bytes | None) -> LeaseValue | None:
    if raw is None:
        return None
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return None
