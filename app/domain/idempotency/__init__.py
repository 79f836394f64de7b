"""Idempotency-Key handling for the creating POSTs."""

from __future__ import annotations

from typing import Annotated

from litestar.params import HeaderParameter

IDEMPOTENT_OPT = "idempotent"
# Request state key: an async callable(run_id) a handler calls once its run exists (see the middleware).
ATTACH_RUN_STATE = "idempotency_attach_run"

# Documents the header on every route that honours it (the middleware does the work).
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description=(
            "Makes the request safe to retry for 24 h: a repeat with the same method, path and body gets the "
            "original outcome (`Idempotent-Replayed: true`)."
        ),
    ),
]
