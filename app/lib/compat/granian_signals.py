"""Lets the app drain before its Granian worker stops serving.

Granian's worker turns SIGTERM/SIGINT straight into "stop": the server closes its listener and waits for the
open responses to end before the ASGI lifespan shutdown runs. An SSE stream of a running agent never ends by
itself, so the app's own shutdown (refuse new runs, give running ones a grace period, interrupt them, end
their streams with `done`) would never start, and the worker would be killed at its kill timeout with runs
lost. Here the worker's signal handler is wrapped, in the worker process, so the first signal runs the app's
`drain` first, with the server still serving everything else, and only then tells Granian to stop. Further
signals while draining (a supervisor signalling the whole process group, then Granian's own) are absorbed:
the drain is bounded by its own timeouts, and the server's kill timeout bounds everything.

Outside Granian (uvicorn in the tests, a plain import) nothing changes and the lifespan shutdown drains."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from app.lib.compat import require_tested

logger = logging.getLogger(__name__)

Drain = Callable[[], Awaitable[None]]

# One app per worker process: the app created last is the one being served.
_drain: Drain | None = None
_installed = False


def drain_before_worker_stop(drain: Drain) -> bool:
    """Makes `drain` run when this Granian worker is asked to stop; False when Granian is not there."""
    global _drain, _installed
    _drain = drain
    if _installed:
        return True
    try:
        from granian import _signals
    except ImportError:
        return False
    require_tested("granian", __name__)
    original = getattr(_signals, "set_loop_signals", None)
    worker_signal = getattr(_signals, "WorkerSignal", None)
    if original is None or worker_signal is None:
        logger.warning("granian's worker signal hook is not where expected: SIGTERM will not drain runs first")
        return False

    def set_loop_signals(loop: asyncio.AbstractEventLoop) -> Any:
        stop = worker_signal()
        state = {"draining": False}

        async def drain_then_stop() -> None:
            try:
                if _drain is not None:
                    await _drain()
            except Exception:
                logger.exception("drain before worker stop failed")
            finally:
                stop.set()

        def on_signal(signum: int, _frame: object) -> None:
            if state["draining"]:
                return
            state["draining"] = True
            logger.info("worker got %s: draining before the server stops", signal.Signals(signum).name)
            loop.create_task(drain_then_stop(), name="drain-before-stop")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig, None)
            except NotImplementedError:  # not a Unix loop: Granian's own behaviour
                return original(loop)
        return stop

    _signals.set_loop_signals = set_loop_signals
    _installed = True
    return True
