"""The HTTP edge, in front of Litestar: HEAD on GET routes, and a bound on the request target.

- `HEAD` answers like `GET` without a body (RFC 9110 §9.3.2): Litestar 2 routes HEAD only to handlers that
  declare it, so every GET route answered 405. The request goes to the app as a GET; the response's status and
  headers (`Content-Length`, `ETag`, ...) are sent and its body is not. A streaming response (SSE) ends right
  after its headers: the app sees the client disconnect.
- A request target (path and query) over `MAX_REQUEST_TARGET` bytes is a problem+json 414 `URI_TOO_LONG`, with
  `X-Request-ID` like every answer. Granian (hyper) itself answers a bare 414 from 65,535 bytes on, before the
  app sees the request; this bound keeps every URL the app can see inside the documented limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from app.lib.compat.asgi_wrapping import wrap_asgi_handler
from app.lib.problems import PROBLEM_JSON, Problem

MAX_REQUEST_TARGET = 8192
_DISCONNECT: ReceiveMessage = {"type": "http.disconnect"}


def _problem_414(length: int) -> bytes:
    return msgspec.json.encode(
        Problem.of(
            414,
            "URI_TOO_LONG",
            "URI too long",
            f"The request target (path and query) is {length} bytes; the limit is {MAX_REQUEST_TARGET}.",
        )
    )


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# How much of a refused body is read and dropped, at most (beyond it the connection is closed mid-upload).
MAX_DISCARDED_BYTES = 64 * 1024 * 1024
DISCARD_TIMEOUT = 10.0


async def _discard_body(receive: Receive) -> None:
    discarded = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DISCARD_TIMEOUT):
            while discarded <= MAX_DISCARDED_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                discarded += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


class HttpEdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        length = len(scope.get("raw_path") or scope["path"].encode()) + (len(query) + 1 if query else 0)
        if length > MAX_REQUEST_TARGET:
            body = _problem_414(length)
            await send(
                {
                    "type": "http.response.start",
                    "status": 414,
                    "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        method = scope["method"]
        if method in _BODY_METHODS:
            await self._drain_refused_body(scope, receive, send)
            return
        if method != "HEAD":
            await self.app(scope, receive, send)
            return
        await self._head(scope, receive, send)

    async def _drain_refused_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body refused before it was read (413) is read to its end and dropped before the response ends.

        Otherwise the server closes the connection with the client's bytes still unread, the kernel answers them
        with a reset, and a client still uploading loses the 413 to a connection error (and keep-alive ends)."""
        body_done = False
        status = 0

        async def tracking_receive() -> ReceiveMessage:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, tracking_receive, tracking_send)
        if status == 413 and not body_done:
            await _discard_body(receive)

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A copy: the server keeps its own scope saying HEAD (it then sends no body bytes itself).
        inner: Any = {**scope, "method": "GET"}
        ended = asyncio.Event()

        async def send_headers_only(message: Message) -> None:
            if ended.is_set():
                return
            if message["type"] == "http.response.start":
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                ended.set()
            elif message["type"] != "http.response.body":
                await send(message)

        async def receive_until_ended() -> ReceiveMessage:
            if ended.is_set():
                return _DISCONNECT
            received = asyncio.ensure_future(receive())
            finished = asyncio.ensure_future(ended.wait())
            done, _ = await asyncio.wait({received, finished}, return_when=asyncio.FIRST_COMPLETED)
            if received in done:
                finished.cancel()
                return received.result()
            received.cancel()
            return _DISCONNECT

        try:
            await self.app(inner, receive_until_ended, send_headers_only)
        finally:
            # What the router found, for the layers outside (the metrics' route label).
            for key in ("path_template", "route_handler"):
                if key in inner:
                    scope[key] = inner[key]


def install(app: object) -> None:
    """Puts `HttpEdgeMiddleware` around a Litestar app's ASGI handler."""
    wrap_asgi_handler(app, HttpEdgeMiddleware)
