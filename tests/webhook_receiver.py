"""A real HTTP webhook receiver on loopback (a thread running `http.server`), scripted per request.

Every request is recorded with its headers, body and arrival time; `max_in_flight` counts, per (path,
webhook-id), how many requests for one event were being handled at the same time (must stay 1)."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    """time.time() when the request had been read."""
    status: int = 0

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> Any:
        """The body, checked by the independent `standardwebhooks` verifier (raises when the signature is wrong)."""
        return Webhook(secret).verify(self.body, self.headers)


# (request, how many requests with this (path, webhook-id) came before it) -> status to answer
Responder = Callable[[Received, int], int]


def always(status: int) -> Responder:
    return lambda _req, _n: status


class Receiver:
    def __init__(self, responder: Responder | None = None, *, hold: float = 0.0) -> None:
        self.responder: Responder = responder or always(200)
        self.hold = hold
        """Seconds each request is held before it is answered (to make overlapping attempts visible)."""
        self.received: list[Received] = []
        self.max_in_flight: Counter[tuple[str, str]] = Counter()
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._seen: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self.release = threading.Event()
        """Set it to let requests a responder is blocking on (see `block_until_released`) go on."""
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one small response must not wait for a delayed ACK

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                request = Received(
                    path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, body=body, at=time.time()
                )
                status = receiver._handle(request)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # many deliveries connect at once; the default backlog of 5 drops SYNs

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handle(self, request: Received) -> int:
        key = (request.path, request.headers.get("webhook-id", ""))
        with self._lock:
            n = self._seen[key]
            self._seen[key] += 1
            self._in_flight[key] += 1
            self.max_in_flight[key] = max(self.max_in_flight[key], self._in_flight[key])
        try:
            if self.hold:
                time.sleep(self.hold)
            self.release.wait(60)
            status = self.responder(request, n)
        finally:
            with self._lock:
                self._in_flight[key] -= 1
        request.status = status
        with self._lock:
            self.received.append(request)
        return status

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]

    def arrived(self, path: str | None = None) -> int:
        """Requests that have arrived (answered or not)."""
        with self._lock:
            return sum(n for (p, _), n in self._seen.items() if path is None or p == path)

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiver(responder: Responder | None = None, *, hold: float = 0.0) -> Iterator[Receiver]:
    rec = Receiver(responder, hold=hold).start()
    try:
        yield rec
    finally:
        rec.stop()
