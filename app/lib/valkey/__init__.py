"""Distributed primitives on Valkey: each lives here once and the domains reuse them."""

from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.keys import scoped_key

__all__ = ("VALKEY_ERRORS", "scoped_key")
