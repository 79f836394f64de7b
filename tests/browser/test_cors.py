"""CORS in a real browser (Debian's Chromium, Playwright): a page served from another loopback origin calls the
API with `fetch`, creates a session, streams a run by reading the `fetch` body as SSE, rejoins it with
Last-Event-ID and reads the exposed headers; a page from an origin not in CORS_ALLOW_ORIGINS is blocked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.browser.test_docs import chromium_path
from tests.instances import InstanceFactory
from tests.servers import free_port

pytestmark = pytest.mark.browser

PAGE = b"<!doctype html><html><head><title>cors page</title></head><body>another origin</body></html>"

# Runs in the page: everything a browser app of this API does, with the answers it could read.
APP_SCRIPT = """
async ([api, key]) => {
  const out = {};
  const created = await fetch(api + '/api/v1/sessions', {
    method: 'POST',
    headers: {'X-API-Key': key, 'Content-Type': 'application/json', 'Idempotency-Key': 'browser-1'},
    body: JSON.stringify({title: 'from the browser'}),
  });
  const session = await created.json();
  out.created = {status: created.status, etag: created.headers.get('ETag'),
                 requestId: created.headers.get('X-Request-ID'), id: session.id};
  const patched = await fetch(api + '/api/v1/sessions/' + session.id, {
    method: 'PATCH',
    headers: {'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json', 'If-Match': '"1"'},
    body: JSON.stringify({title: 'renamed in the browser'}),
  });
  out.patched = {status: patched.status, etag: patched.headers.get('ETag')};

  async function readSSE(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const events = [];
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf('\\n\\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = {};
        for (const line of block.split('\\n')) {
          if (!line || line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          event[line.slice(0, colon)] = line.slice(colon + 1).replace(/^ /, '');
        }
        if (event.event) events.push(event);
      }
    }
    return events;
  }

  const run = await fetch(api + '/api/v1/query', {
    method: 'POST',
    headers: {'X-API-Key': key, 'Content-Type': 'application/json'},
    body: JSON.stringify({prompt: 'hello from the browser', session_id: session.id}),
  });
  out.run = {status: run.status, type: run.headers.get('Content-Type'),
             sessionId: run.headers.get('X-Session-ID'), runId: run.headers.get('X-Run-ID')};
  const events = await readSSE(run);
  out.run.events = events.map(e => e.event);
  out.run.result = JSON.parse(events.find(e => e.event === 'result').data).result;

  const rejoin = await fetch(api + '/api/v1/sessions/' + session.id + '/events', {
    headers: {'X-API-Key': key, 'Last-Event-ID': events[0].id},
  });
  out.rejoin = {status: rejoin.status, events: (await readSSE(rejoin)).map(e => e.event)};

  const refused = await fetch(api + '/api/v1/sessions', {headers: {'X-API-Key': 'aak_wrong'}});
  out.refused = {status: refused.status, code: (await refused.json()).code,
                 requestId: refused.headers.get('X-Request-ID')};
  return out;
}
"""

BLOCKED_SCRIPT = """
async ([api, key]) => {
  const attempts = {
    create: () => fetch(api + '/api/v1/sessions', {method: 'POST',
      headers: {'X-API-Key': key, 'Content-Type': 'application/json'}, body: JSON.stringify({title: 'blocked'})}),
    simple: () => fetch(api + '/health/live'),
  };
  const out = {};
  for (const [name, attempt] of Object.entries(attempts)) {
    try { out[name] = 'read status ' + (await attempt()).status; } catch (e) { out[name] = 'blocked: ' + e.name; }
  }
  return out;
}
"""


@contextlib.asynccontextmanager
async def page_server() -> AsyncIterator[str]:
    """A tiny HTTP server on its own loopback port: the origin the page comes from."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {len(PAGE)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + PAGE)
            await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_page_on_another_origin_uses_the_api_and_others_are_blocked(
    instance_factory: InstanceFactory, api_key: str
) -> None:
    executable = chromium_path()
    from playwright.async_api import async_playwright

    async with page_server() as allowed_origin, page_server() as other_origin:
        api = await instance_factory("cors-browser", app__cors_allow_origins=(allowed_origin,))
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{allowed_origin}/app.html")
                out: dict[str, Any] = await page.evaluate(APP_SCRIPT, [api.base_url, api_key])

                blocked_page = await browser.new_page()
                console: list[str] = []
                blocked_page.on("console", lambda msg: console.append(msg.text))
                await blocked_page.goto(f"{other_origin}/app.html")
                blocked: dict[str, str] = await blocked_page.evaluate(BLOCKED_SCRIPT, [api.base_url, api_key])
            finally:
                await browser.close()

    assert out["created"]["status"] == 201
    assert out["created"]["etag"] == '"1"'  # an exposed header, readable by the page
    assert out["created"]["requestId"]
    assert out["patched"] == {"status": 200, "etag": '"2"'}
    run = out["run"]
    assert run["status"] == 200
    assert run["type"].startswith("text/event-stream")
    assert run["sessionId"] == out["created"]["id"]
    assert run["runId"]
    assert run["events"][0] == "init" and run["events"][-1] == "done"
    assert "result" in run["events"]
    assert run["result"] == "Echo: hello from the browser"
    assert out["rejoin"]["status"] == 200
    assert out["rejoin"]["events"][-1] == "done"
    assert "init" not in out["rejoin"]["events"]  # after the init event's id, exclusive
    assert out["refused"]["status"] == 401 and out["refused"]["code"] == "UNAUTHORIZED"
    assert out["refused"]["requestId"]

    assert blocked == {"create": "blocked: TypeError", "simple": "blocked: TypeError"}, blocked
    assert any("CORS" in line for line in console), console
    # The refused preflight kept the POST from ever being sent: no session was created.
    async with httpx.AsyncClient(base_url=api.base_url, headers={"X-API-Key": api_key}) as c:
        titles = [s["title"] for s in (await c.get("/api/v1/sessions")).json()["items"]]
    assert titles == ["renamed in the browser"]
