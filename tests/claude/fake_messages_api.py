"""A fake Anthropic Messages API on loopback, for running the REAL bundled Claude Code CLI offline.

`POST /v1/messages` answers with a streamed message (`message_start`, `content_block_*`, `message_delta`,
`message_stop`). What it answers is decided by the newest user turn of the request:

- a `tool_result` turn: a text "Tool said: <result>" (ends the turn);
- `tool <command>`: a `Bash` tool_use running <command>;
- `ask`: an `AskUserQuestion` tool_use;
- `slow`: 400 text deltas, 25 ms apart (to interrupt mid-stream);
- `fail`: HTTP 500;
- when the request offers the `StructuredOutput` tool: a call to it with `{"answer": ..., "n": 42}`;
- anything else: "Echo: <prompt> (user turns: N)", N counting the user turns the CLI sent, so a resumed
  conversation is visible in the answer.

Every request is recorded in `requests`. Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

SLOW_DELTAS = 400
SLOW_DELAY = 0.025


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _user_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("role") == "user"]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "\n".join(parts)


def _tool_results(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return []
    return [b for b in content or [] if isinstance(b, dict) and b.get("type") == "tool_result"]


def _prompt_of(text: str) -> str:
    """The user's own words: the CLI may prepend <system-reminder> blocks to the first turn."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    kept: list[str] = []
    in_reminder = False
    for ln in lines:
        if "<system-reminder>" in ln:
            in_reminder = True
        if not in_reminder:
            kept.append(ln)
        if "</system-reminder>" in ln:
            in_reminder = False
    return (kept[-1] if kept else "").strip()


@dataclass
class FakeMessagesApi:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FakeMessagesApi:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # -- HTTP -------------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                await self._route(method, path.split("?")[0], body, writer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "OK")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n"
            f"request-id: req_{uuid.uuid4().hex[:12]}\r\n\r\n".encode()
            + raw
        )

    async def _route(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if method == "POST" and path == "/v1/messages/count_tokens":
            self._respond(writer, 200, {"input_tokens": 10})
            return
        if method != "POST" or path != "/v1/messages":
            self._respond(writer, 404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
            return
        request = json.loads(body or b"{}")
        self.requests.append(request)
        messages = request.get("messages") or []
        turns = _user_turns(messages)
        last = turns[-1]["content"] if turns else ""
        prompt = _prompt_of(_text_of(last))
        if not request.get("stream"):
            # Side requests (titles, summaries): a short plain answer.
            self._respond(writer, 200, self._message([{"type": "text", "text": "ok"}], request, "end_turn"))
            return
        if prompt == "fail" and not _tool_results(last):
            self._respond(writer, 500, {"type": "error", "error": {"type": "api_error", "message": "injected failure"}})
            return
        await self._stream(writer, request, turns, last, prompt)

    # -- answers ---------------------------------------------------------------------------------------

    @staticmethod
    def _message(content: list[dict[str, Any]], request: dict[str, Any], stop: str) -> dict[str, Any]:
        return {
            "id": f"msg_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "claude-test"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 7},
        }

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        request: dict[str, Any],
        turns: list[dict[str, Any]],
        last: Any,
        prompt: str,
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"connection: close\r\n\r\n"
        )
        tools = {t.get("name") for t in request.get("tools") or []}
        results = _tool_results(last)
        text_chunks: list[str] = []
        tool_use: dict[str, Any] | None = None
        delay = 0.0
        if results:
            first = results[0].get("content")
            result_text = first if isinstance(first, str) else _text_of(first)
            text_chunks = [f"Tool said: {result_text.strip()}"]
        elif "StructuredOutput" in tools:
            tool_use = {"name": "StructuredOutput", "input": {"answer": prompt, "n": 42}}
        elif prompt.startswith("tool "):
            tool_use = {"name": "Bash", "input": {"command": prompt[5:], "description": "run it"}}
        elif prompt == "ask":
            tool_use = {
                "name": "AskUserQuestion",
                "input": {
                    "questions": [
                        {
                            "question": "Which colour?",
                            "header": "Colour",
                            "options": [
                                {"label": "red", "description": "warm"},
                                {"label": "blue", "description": "cool"},
                            ],
                            "multiSelect": False,
                        }
                    ]
                },
            }
        elif prompt == "slow":
            text_chunks = [f"w{i} " for i in range(SLOW_DELTAS)]
            delay = SLOW_DELAY
        else:
            text_chunks = ["Echo: ", prompt, f" (user turns: {len(turns)})"]

        message = self._message([], request, "tool_use" if tool_use else "end_turn")
        message["usage"] = {"input_tokens": 12, "output_tokens": 1}
        writer.write(_sse("message_start", {"type": "message_start", "message": message}))
        if tool_use is not None:
            block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": tool_use["name"], "input": {}}
            writer.write(
                _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
            )
            writer.write(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": json.dumps(tool_use["input"])},
                    },
                )
            )
        else:
            writer.write(
                _sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                )
            )
            for chunk in text_chunks:
                writer.write(
                    _sse(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
                    )
                )
                if delay:
                    await writer.drain()
                    await asyncio.sleep(delay)
        writer.write(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        writer.write(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use" if tool_use else "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 7},
                },
            )
        )
        writer.write(_sse("message_stop", {"type": "message_stop"}))
        await writer.drain()
        writer.close()
