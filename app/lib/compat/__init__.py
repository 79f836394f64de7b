"""Patches that reach into upstream internals, gathered here, each gated on the upstream versions it was
tested with.

Each module works around one upstream behaviour through something that is not public API (a private
module, a closure cell, an attribute the framework reads). Such code breaks silently on an upgrade, so each
calls `require_tested()` when it is installed: on a version outside the tested range the app refuses to
start and names the patch, instead of misbehaving under load. The pins in `pyproject.toml` carry the same
upper bounds. After testing a new upstream version, widen its range here and the pin there together.

`AGENT_API_ALLOW_UNTESTED=1` turns the refusal into a warning (for trying a new version, not for production).

- `granian_signals`: SIGTERM drains runs before the Granian worker stops serving (wraps `granian._signals`).
- `alchemy_autocommit`: Advanced-Alchemy's autocommit skips requests that never touched the database
  (reads its private scope-state helpers).
- `litestar_options`: `OPTIONS` answers list every method of a path (rewrites the closure cell of
  Litestar 2's automatic OPTIONS handlers; litestar-org/litestar#4169, fixed in v3).
- `valkey_cluster`: valkey-py's cluster client survives a primary's failover (overrides its topology refresh,
  reads its slot map; only with `VALKEY_CLUSTER=true`).
- `asgi_wrapping`: our outermost ASGI layers (request context, metrics, edge checks, CORS preflight problems,
  proxy headers) wrap `Litestar.asgi_handler`, outside Litestar's own exception handling.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version

logger = logging.getLogger(__name__)

# package -> (lowest tested, first untested); same bounds as the pins in pyproject.toml.
TESTED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "granian": ((2, 8), (2, 9)),
    "advanced-alchemy": ((1, 12), (1, 13)),
    "litestar": ((2, 25), (2, 26)),
    "valkey": ((6, 2), (6, 3)),
}
ALLOW_UNTESTED_ENV = "AGENT_API_ALLOW_UNTESTED"


class UntestedUpstreamError(RuntimeError):
    """An upstream package is at a version our patch of its internals was not tested with."""


def release(text: str) -> tuple[int, ...]:
    """The numeric release of a version string (`2.8.7` -> (2, 8, 7); pre-release tails are dropped)."""
    parts: list[int] = []
    for piece in text.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def require_tested(package: str, patch: str) -> None:
    """Refuses (raises `UntestedUpstreamError`) when `package` is installed at a version outside `TESTED`."""
    try:
        installed = version(package)
    except PackageNotFoundError:
        return  # not installed: the patch has nothing to patch (each patch handles its own absence)
    low, high = TESTED[package]
    if low <= release(installed) < high:
        return
    tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    message = (
        f"{patch} patches {package} internals and was tested with {package}{tested}, not {installed}: "
        f"test it, then widen app/lib/compat.TESTED and the pin in pyproject.toml "
        f"(or set {ALLOW_UNTESTED_ENV}=1 to start anyway)"
    )
    if os.environ.get(ALLOW_UNTESTED_ENV, "").lower() in ("1", "true", "yes"):
        logger.warning(message)
        return
    raise UntestedUpstreamError(message)
