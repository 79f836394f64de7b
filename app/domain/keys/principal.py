"""Who a request authenticated as (`request.user`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from uuid import UUID

from litestar import Request
from litestar.datastructures import State


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: UUID
    name: str


# A request that passed authentication: `request.user` is its `Principal`.
AuthedRequest: TypeAlias = Request[Principal, Any, State]
