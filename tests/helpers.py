"""Shared test helpers: waiting on conditions with deadlines, reading SSE streams."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Polls `probe` until it returns something truthy; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@dataclass
class SSEEvent:
    id: str | None
    event: str
    data: Any
    comment: bool = False


async def iter_sse(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """Parses a text/event-stream body into events (comments come out with `comment=True`)."""
    event_id: str | None = None
    event_name = "message"
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data_lines:
                raw = "\n".join(data_lines)
                try:
                    data: Any = json.loads(raw)
                except json.JSONDecodeError:
                    data = raw
                yield SSEEvent(id=event_id, event=event_name, data=data)
            event_id, event_name, data_lines = None, "message", []
            continue
        if line.startswith(":"):
            yield SSEEvent(id=None, event="", data=line[1:].strip(), comment=True)
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "event":
            event_name = value
        elif name == "data":
            data_lines.append(value)


async def collect_sse(response: httpx.Response, *, until: str = "done", timeout: float = 30.0) -> list[SSEEvent]:
    """All events (not comments) until one named `until` arrives."""
    out: list[SSEEvent] = []

    async def run() -> None:
        async for ev in iter_sse(response):
            if ev.comment:
                continue
            out.append(ev)
            if ev.event == until:
                return

    await asyncio.wait_for(run(), timeout)
    return out


PROBLEM_JSON = "application/problem+json"

SESSION_FIELDS = frozenset(
    {
        "id",
        "title",
        "status",
        "model",
        "permission_mode",
        "parent_session_id",
        "tags",
        "metadata",
        "total_turns",
        "total_cost_usd",
        "usage",
        "version",
        "created_at",
        "updated_at",
        "last_run_at",
        "active_run",
        "queued_runs",
    }
)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem+json with our `code`; returns the body."""
    assert response.status_code == status, (
        f"expected {status} {code}, got {response.status_code}: {response.text[:500]}"
    )
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM_JSON, response.headers["content-type"]
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status, body
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["type"], str)
    assert body["type"]
    return body
