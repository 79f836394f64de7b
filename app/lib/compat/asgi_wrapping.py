"""Our outermost ASGI layers go around `Litestar.asgi_handler`, the app's own entry after routing setup.

Litestar has no public hook for middleware outside its exception handling (a layer there sees the status
actually sent, and runs even when routing fails), so we replace the attribute it calls for each request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.lib.compat import require_tested

ASGIApp = Any


def wrap_asgi_handler(app: Any, wrap: Callable[[ASGIApp], ASGIApp]) -> Any:
    """Makes `wrap(current handler)` the app's ASGI handler; returns the new outermost layer."""
    require_tested("litestar", "app.lib.compat.asgi_wrapping")
    outer = wrap(app.asgi_handler)
    app.asgi_handler = outer
    return outer
