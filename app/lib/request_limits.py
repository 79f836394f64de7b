"""Limits every request meets before any handler, stated once: the server enforces these values and every
error text and document that names them is made from them."""

from __future__ import annotations

MAX_BODY_BYTES = 1024 * 1024
MAX_BODY_TEXT = f"{MAX_BODY_BYTES // (1024 * 1024)} MiB"
