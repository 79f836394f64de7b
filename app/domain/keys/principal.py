"""Who a request authenticated as (`request.user`)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: UUID
    name: str
