"""Our run events (init, message, partial, question, result, error, done) as OpenAI objects and stream items.

Both translators are pure functions of the run's event sequence: replaying the same events gives the same items
with the same sequence numbers, so a Responses stream resumed with `starting_after` on another instance goes on
exactly where the first one stopped."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal
from uuid import UUID

import msgspec

from app.domain.openai.runs_port import PortRun
from app.domain.openai.schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChunkChoice,
    ChunkDelta,
    CompletionTokensDetails,
    CompletionUsage,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    PromptTokensDetails,
    ResponseError,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
)

DONE_LINE = b"data: [DONE]\n\n"


def response_id(run_id: UUID) -> str:
    return f"resp_{run_id.hex}"


def message_id(run_id: UUID) -> str:
    return f"msg_{run_id.hex}"


def run_id_of(response_id_value: str) -> UUID | None:
    if not response_id_value.startswith("resp_"):
        return None
    try:
        return UUID(hex=response_id_value[5:])
    except ValueError:
        return None


def assistant_texts(event: str, data: dict[str, Any]) -> list[str]:
    """The text blocks of an assistant `message` (tool use, thinking and system notices are the agent's own)."""
    if event != "message" or data.get("role") != "assistant":
        return []
    return [str(b.get("text", "")) for b in data.get("content") or () if b.get("type") == "text" and b.get("text")]


def _tokens(usage: dict[str, Any] | None) -> tuple[int, int, int, int]:
    usage = usage or {}
    return (
        int(usage.get("input_tokens") or 0),
        int(usage.get("output_tokens") or 0),
        int(usage.get("cache_read_input_tokens") or 0),
        int(usage.get("cache_creation_input_tokens") or 0),
    )


def completion_usage(usage: dict[str, Any] | None) -> CompletionUsage:
    prompt, completion, cached, _ = _tokens(usage)
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(),
    )


def response_usage(usage: dict[str, Any] | None) -> ResponseUsage:
    prompt, completion, cached, written = _tokens(usage)
    return ResponseUsage(
        input_tokens=prompt,
        input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=written),
        output_tokens=completion,
        output_tokens_details=OutputTokensDetails(),
        total_tokens=prompt + completion,
    )


# -- chat completions ------------------------------------------------------------------------------------


class ChatOutcome:
    """What a chat completion needs from a run: its text, usage and how it ended."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.reason: str | None = None

    def feed(self, event: str, data: dict[str, Any]) -> list[str]:
        """Takes one event; returns the new assistant text it carries."""
        texts = assistant_texts(event, data)
        self.texts.extend(texts)
        if event == "result":
            self.result = data
        elif event == "error":
            self.error = data
        elif event == "done":
            self.reason = str(data.get("reason", "error"))
        return texts

    @property
    def final_text(self) -> str:
        if self.result is not None and isinstance(self.result.get("result"), str):
            return str(self.result["result"])
        return "".join(self.texts)

    @property
    def failed(self) -> bool:
        return self.reason == "error" or self.error is not None

    @property
    def usage(self) -> dict[str, Any] | None:
        return (self.result or {}).get("usage")


def chat_completion(completion_id: str, model: str, created: int, outcome: ChatOutcome) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id,
        object="chat.completion",
        created=created,
        model=model,
        choices=[
            ChatChoice(index=0, message=ChatMessage(role="assistant", content=outcome.final_text), finish_reason="stop")
        ],
        usage=completion_usage(outcome.usage),
    )


class ChatChunker:
    """Turns a run's events into `data:` lines of `chat.completion.chunk`s, ending with `data: [DONE]`."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.outcome = ChatOutcome()
        self.started = False

    def _line(self, choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=self.completion_id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model,
            choices=choices,
        )
        if self.include_usage:
            chunk.usage = usage
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"

    def start(self) -> bytes:
        self.started = True
        return self._line([ChunkChoice(index=0, delta=ChunkDelta(role="assistant", content=""))])

    def feed(self, event: str, data: dict[str, Any]) -> bytes:
        out = [self._line([ChunkChoice(index=0, delta=ChunkDelta(content=t))]) for t in self.outcome.feed(event, data)]
        if event == "done":
            out.append(self.finish())
        return b"".join(out)

    def finish(self) -> bytes:
        outcome = self.outcome
        if outcome.failed:
            error = outcome.error or {}
            body = {
                "error": {
                    "message": str(error.get("message") or f"The run ended: {outcome.reason}."),
                    "type": "server_error",
                    "param": None,
                    "code": str(error.get("code") or "AGENT_ERROR").lower(),
                }
            }
            return b"data: " + msgspec.json.encode(body) + b"\n\n" + DONE_LINE
        lines = [self._line([ChunkChoice(index=0, delta=ChunkDelta(), finish_reason="stop")])]
        if self.include_usage:
            lines.append(self._line([], completion_usage(outcome.usage)))
        return b"".join(lines) + DONE_LINE


# -- responses -------------------------------------------------------------------------------------------


class ResponseMeta(msgspec.Struct, kw_only=True):
    """What a response object says besides its run's events (from the request, or defaults on retrieve)."""

    model: str
    instructions: str | None = None
    metadata: dict[str, str] = {}
    previous_response_id: str | None = None
    background: bool = False


class ResponseBuilder:
    """Feeds on a run's events; `events()` gives the Responses stream items, `snapshot()` the object now."""

    def __init__(self, run_id: UUID, session_id: UUID, created_at: int, meta: ResponseMeta) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.created_at = created_at
        self.meta = meta
        self.seq = 0
        self.texts: list[str] = []
        self.item_open = False
        self.item_done = False
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.status: ResponseStatus = "in_progress"
        self.completed_at: int | None = None

    # -- the object ----------------------------------------------------------------------------------
    @property
    def final_text(self) -> str:
        if self.result is not None and isinstance(self.result.get("result"), str) and self.result["result"]:
            return str(self.result["result"])
        return "".join(self.texts)

    def _item(self) -> OutputMessage:
        done = self.item_done
        text = self.final_text if done else "".join(self.texts)
        item_status: Literal["in_progress", "completed", "incomplete"] = (
            "in_progress" if not done else ("completed" if self.status == "completed" else "incomplete")
        )
        return OutputMessage(
            id=message_id(self.run_id),
            type="message",
            role="assistant",
            status=item_status,
            content=[OutputText(type="output_text", text=text, annotations=[], logprobs=[])]
            if (done or self.texts)
            else [],
        )

    def snapshot(self) -> ResponseObject:
        return ResponseObject(
            id=response_id(self.run_id),
            created_at=self.created_at,
            completed_at=self.completed_at,
            status=self.status,
            background=self.meta.background,
            error=ResponseError(
                code=str((self.error or {}).get("code") or "server_error").lower(),
                message=str((self.error or {}).get("message") or "The run failed."),
            )
            if self.status == "failed"
            else None,
            instructions=self.meta.instructions,
            metadata=dict(self.meta.metadata),
            model=self.meta.model,
            output=[self._item()] if (self.item_open or self.item_done) else [],
            previous_response_id=self.meta.previous_response_id,
            usage=response_usage((self.result or {}).get("usage")) if self.result is not None else None,
            session_id=str(self.session_id),
        )

    # -- the stream ----------------------------------------------------------------------------------
    def _emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        item = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return item

    def _encoded_snapshot(self) -> Any:
        return msgspec.to_builtins(self.snapshot())

    def start(self) -> list[dict[str, Any]]:
        return [
            self._emit("response.created", response=self._encoded_snapshot()),
            self._emit("response.in_progress", response=self._encoded_snapshot()),
        ]

    def _open_item(self) -> list[dict[str, Any]]:
        self.item_open = True
        item_id = message_id(self.run_id)
        return [
            self._emit("response.output_item.added", output_index=0, item=msgspec.to_builtins(self._item())),
            self._emit(
                "response.content_part.added",
                item_id=item_id,
                output_index=0,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for text in assistant_texts(event, data):
            if not self.item_open:
                out.extend(self._open_item())
            self.texts.append(text)
            out.append(
                self._emit(
                    "response.output_text.delta",
                    item_id=message_id(self.run_id),
                    output_index=0,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
        if event == "result":
            self.result = data
        elif event == "error":
            self.error = data
        elif event == "done":
            out.extend(self._finish(str(data.get("reason", "error")), data.get("ended_at")))
        return out

    def _finish(self, reason: str, ended_at: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if reason == "completed" and self.error is None:
            self.status = "completed"
        elif reason == "interrupted":
            self.status = "cancelled"
        else:
            self.status = "failed"
        if isinstance(ended_at, int):
            self.completed_at = ended_at
        if self.status == "completed" and not self.item_open and self.final_text:
            out.extend(self._open_item())
            out.append(
                self._emit(
                    "response.output_text.delta",
                    item_id=message_id(self.run_id),
                    output_index=0,
                    content_index=0,
                    delta=self.final_text,
                    logprobs=[],
                )
            )
        if self.item_open:
            self.item_done = True
            item_id = message_id(self.run_id)
            text = self.final_text
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out.append(
                self._emit(
                    "response.output_text.done",
                    item_id=item_id,
                    output_index=0,
                    content_index=0,
                    text=text,
                    logprobs=[],
                )
            )
            out.append(
                self._emit("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=part)
            )
            out.append(self._emit("response.output_item.done", output_index=0, item=msgspec.to_builtins(self._item())))
        terminal = {"completed": "response.completed", "failed": "response.failed"}.get(
            self.status, "response.incomplete"
        )
        out.append(self._emit(terminal, response=self._encoded_snapshot()))
        return out


def response_from_run(
    run: PortRun, meta: ResponseMeta, events: Iterable[tuple[str, dict[str, Any]]] = ()
) -> ResponseObject:
    """The object of a run as it is now: from its events when given, else from the run's own fields."""
    created = int(run.created_at.timestamp())
    builder = ResponseBuilder(run.id, run.session_id, created, meta)
    if run.status == "queued":
        builder.status = "queued"
    for event, data in events:
        builder.feed(event, data)
    if builder.status in ("queued", "in_progress") and run.ended:
        if run.result is not None:
            builder.feed("result", run.result)
        if run.error is not None:
            builder.feed("error", {"code": run.error.code, "message": run.error.message})
        reason = {"completed": "completed", "interrupted": "interrupted", "cancelled": "interrupted"}.get(
            run.status, "error"
        )
        builder.feed("done", {"reason": reason, "ended_at": int(run.ended_at.timestamp()) if run.ended_at else None})
    return builder.snapshot()
