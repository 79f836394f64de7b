"""Our run events as OpenAI chat chunks and Responses events: pure and deterministic (a resumed stream on
another instance regenerates the same items with the same sequence numbers)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from app.domain.openai.translate import ChatChunker, ResponseBuilder, ResponseMeta, run_id_of

RUN = uuid.UUID("01a23127-e441-7488-9ab4-ab5fafd7db1c")
SESSION = uuid.UUID("01a23127-e3fb-703c-93e1-c9ab79bc6389")


def say(text: str) -> tuple[str, dict[str, Any]]:
    return "message", {"role": "assistant", "content": [{"type": "text", "text": text}]}


EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("init", {"model": "demo"}),
    ("message", {"role": "user", "content": [{"type": "text", "text": "hi there"}]}),
    say("Echo: "),
    ("message", {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Read", "input": {}}]}),
    say("hi "),
    say("there"),
    (
        "result",
        {"result": "Echo: hi there", "usage": {"input_tokens": 2, "output_tokens": 3, "cache_read_input_tokens": 1}},
    ),
    ("done", {"reason": "completed", "ended_at": 1_700_000_000}),
]


def build() -> list[dict[str, Any]]:
    builder = ResponseBuilder(RUN, SESSION, 1_699_999_999, ResponseMeta(model="demo"))
    items = builder.start()
    for event, data in EVENTS:
        items.extend(builder.feed(event, data))
    return items


def test_response_events_follow_the_reference_sequence() -> None:
    items = build()
    assert [i["type"] for i in items] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [i["sequence_number"] for i in items] == list(range(len(items)))
    assert items[7]["text"] == "Echo: hi there" and items[9]["item"]["status"] == "completed"
    final = items[-1]["response"]
    assert final["status"] == "completed" and final["completed_at"] == 1_700_000_000
    assert final["output"][0]["content"][0]["text"] == "Echo: hi there"
    assert final["usage"] == {
        "input_tokens": 2,
        "input_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 5,
    }
    assert final["id"] == f"resp_{RUN.hex}" and run_id_of(final["id"]) == RUN


def test_replay_is_identical() -> None:
    assert json.dumps(build()) == json.dumps(build())


def test_interrupted_and_failed_runs() -> None:
    builder = ResponseBuilder(RUN, SESSION, 0, ResponseMeta(model="demo"))
    builder.start()
    builder.feed(*say("partial"))
    items = builder.feed("done", {"reason": "interrupted"})
    assert [i["type"] for i in items][-1] == "response.incomplete"
    assert items[-1]["response"]["status"] == "cancelled"
    assert items[-2]["item"]["status"] == "incomplete"
    failed = ResponseBuilder(RUN, SESSION, 0, ResponseMeta(model="demo"))
    failed.start()
    failed.feed("error", {"code": "AGENT_ERROR", "message": "boom"})
    last = failed.feed("done", {"reason": "error"})[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["error"] == {"code": "agent_error", "message": "boom"}


def test_chat_chunks() -> None:
    chunker = ChatChunker("chatcmpl-x", "demo", 1, include_usage=True)
    body = chunker.start() + b"".join(chunker.feed(event, data) for event, data in EVENTS)
    lines = [line.removeprefix(b"data: ") for line in body.split(b"\n\n") if line]
    assert lines[-1] == b"[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Echo: hi there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-x" for c in chunks)
