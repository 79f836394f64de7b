"""OpenAI-compatible use cases: models, chat completions and responses, each run a normal run of the runs domain
(through `RunsPort`)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec

from app.agents.base import AgentBackend, AgentRequest, AgentRequestError
from app.config.settings import Settings
from app.domain.openai.errors import OpenAIError, invalid, unsupported
from app.domain.openai.runs_port import PortRun, RunsPort
from app.domain.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    InputItemList,
    InputMessage,
    InputText,
    Model,
    ModelList,
    ResponseCreateRequest,
    ResponseObject,
)
from app.domain.openai.translate import (
    ChatChunker,
    ChatOutcome,
    ResponseBuilder,
    ResponseMeta,
    chat_completion,
    response_from_run,
    run_id_of,
)
from app.domain.runs.schemas import RunOptions
from app.domain.sessions.reader import SessionReader
from app.lib.problems import ApiError
from app.lib.sse import PING_FRAME, SSEFrame

OWNED_BY = "agent-api"
# Listed for the claude backend when CLAUDE_MODELS is empty (any name matching CLAUDE_MODEL_PATTERN is accepted).
CLAUDE_ALIASES = ("default", "sonnet", "opus", "haiku")

# Parameters an agent run cannot honour: 400 naming them unless absent or at their default value.
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "temperature": (None,),
    "top_p": (None,),
    "max_tokens": (None,),
    "max_completion_tokens": (None,),
    "max_output_tokens": (None,),
    "max_tool_calls": (None,),
    "stop": (None, []),
    "seed": (None,),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "reasoning_effort": (None,),
    "reasoning": (None,),
    "service_tier": (None, "auto", "default"),
    "web_search_options": (None,),
    "verbosity": (None,),
    "prompt_cache_key": (None,),
    "prompt_cache_retention": (None,),
    "safety_identifier": (None,),
    "include": (None, []),
    "truncation": (None, "disabled"),
    "conversation": (None,),
    "prompt": (None,),
    "stream_options": (None,),
    "context_management": (None,),
}
_WHY = {
    "tools": "Client-side tools are not supported; the agent uses its own tools.",
    "functions": "Client-side functions are not supported; the agent uses its own tools.",
    "logprobs": "Log probabilities are not available from an agent run.",
    "audio": "Audio output is not supported.",
}


def refuse_unsupported(body: msgspec.Struct, skip: frozenset[str] = frozenset()) -> None:
    for name, defaults in _DEFAULTS.items():
        if name in skip or not hasattr(body, name):
            continue
        value = getattr(body, name)
        if not any(value == d and type(value) is type(d) for d in defaults):
            raise unsupported(name, _WHY.get(name, ""))


@dataclass(frozen=True)
class Conversation:
    system: str | None
    context: list[tuple[str, str]]
    prompt: str

    def as_prompt(self) -> str:
        if not self.context:
            return self.prompt
        turns = "\n\n".join(f"{'Assistant' if role == 'assistant' else 'User'}: {text}" for role, text in self.context)
        return f"The conversation so far:\n\n{turns}\n\nThe user's new message:\n\n{self.prompt}"


def _content_text(content: Any, param: str, part_types: tuple[str, ...]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(param, f"'{param}' must be a string or a list of content parts.")
    texts: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(f"{param}[{j}]", f"'{param}[{j}]' must be a content part object with a 'type'.")
        if part["type"] not in part_types:
            raise unsupported(f"{param}[{j}].type", f"Only {', '.join(part_types)} content is supported.")
        if not isinstance(part.get("text"), str):
            raise invalid(f"{param}[{j}].text", f"'{param}[{j}].text' must be a string.")
        texts.append(part["text"])
    return "\n".join(texts)


def parse_conversation(
    items: list[dict[str, Any]], param: str, part_types: tuple[str, ...], extra_system: str | None = None
) -> Conversation:
    """System/developer messages -> system prompt, earlier turns -> context, the last user message -> prompt."""
    system: list[str] = [extra_system] if extra_system else []
    turns: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, f"'{where}' must be a message object.")
        kind = item.get("type", "message")
        if kind != "message":
            raise unsupported(f"{where}.type", "Only message items are supported.")
        role = item.get("role")
        if role in ("tool", "function"):
            raise unsupported(f"{where}.role", "Client-side tool results are not supported.")
        if role not in ("system", "developer", "user", "assistant"):
            raise invalid(f"{where}.role", f"'{where}.role' must be system, developer, user or assistant.")
        for name in ("tool_calls", "function_call", "audio"):
            if item.get(name):
                raise unsupported(f"{where}.{name}")
        types = (*part_types, "output_text", "refusal") if role == "assistant" else part_types
        text = _content_text(item.get("content"), f"{where}.content", types)
        if role in ("system", "developer"):
            if text:
                system.append(text)
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise invalid(param, f"The last message of '{param}' must be a user message.")
    if not turns[-1][1].strip():
        raise invalid(param, "The last user message is empty.")
    return Conversation(system="\n\n".join(system) or None, context=turns[:-1], prompt=turns[-1][1])


def run_options(param: str, **values: Any) -> RunOptions:
    try:
        return msgspec.convert({k: v for k, v in values.items() if v is not None}, RunOptions)
    except msgspec.ValidationError as exc:
        raise invalid(param, f"Invalid '{param}': {exc}") from exc


def output_format(response_format: dict[str, Any] | None, param: str) -> dict[str, Any] | None:
    """`{"type": "json_schema", "json_schema": {"schema": ...}}` (chat) or `{"format": {...}}` (responses)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        schema = response_format.get("schema")
        if schema is None and isinstance(response_format.get("json_schema"), dict):
            schema = response_format["json_schema"].get("schema")
        if not isinstance(schema, dict):
            raise invalid(param, f"'{param}' of type json_schema needs a 'schema' object.")
        return {"type": "json_schema", "schema": schema}
    raise unsupported(f"{param}.type", "Only 'text' and 'json_schema' are supported.")


def _ended_at(frame: SSEFrame) -> int:
    """When the run ended, from its `done` entry's stream id (the same on every instance)."""
    ms = frame.id.split("-", 1)[0]
    return int(ms) // 1000 if ms.isdigit() else int(time.time())


class ModelCatalog:
    """The models the configured backend accepts (`demo` for demo)."""

    def __init__(self, settings: Settings, backend: AgentBackend) -> None:
        self.settings = settings
        self.backend = backend

    def listed(self) -> list[str]:
        if self.backend.name == "demo":
            return ["demo"]
        if self.backend.name == "claude":
            return list(self.settings.claude.models or CLAUDE_ALIASES)
        return []

    def accepts(self, model: str) -> bool:
        if self.backend.name == "demo":
            return model == "demo"
        try:
            self.backend.validate(AgentRequest(session_id="", run_id="", prompt="", model=model))
        except AgentRequestError:
            return False
        return True

    def model(self, model_id: str) -> Model:
        return Model(id=model_id, object="model", created=0, owned_by=OWNED_BY)

    def list(self) -> ModelList:
        return ModelList(object="list", data=[self.model(m) for m in self.listed()])

    def require(self, model_id: str, param: str | None = "model") -> Model:
        if not self.accepts(model_id):
            raise OpenAIError(
                404,
                f"The model '{model_id}' does not exist or you do not have access to it.",
                param=param,
                code="model_not_found",
            )
        return self.model(model_id)


_SESSION_ID = re.compile(r"^[0-9a-fA-F-]{32,36}$")


def _session_id(value: str | None) -> UUID | None:
    if value is None:
        return None
    try:
        if not _SESSION_ID.match(value):
            raise ValueError
        return UUID(value)
    except ValueError:
        raise invalid("metadata.session_id", "'metadata.session_id' must be a session id (UUID).") from None


async def _frames(batches: AsyncIterator[list[SSEFrame] | None]) -> AsyncIterator[SSEFrame | None]:
    async for batch in batches:
        if batch is None:
            yield None
            continue
        for frame in batch:
            yield frame


class OpenAIService:
    def __init__(self, port: RunsPort, catalog: ModelCatalog, sessions: SessionReader) -> None:
        self.port = port
        self.catalog = catalog
        self.sessions = sessions

    # -- chat completions ------------------------------------------------------------------------------
    async def start_chat(self, owner_key_id: UUID, body: ChatCompletionRequest) -> PortRun:
        refuse_unsupported(body, skip=frozenset({"stream_options"}))
        if body.n not in (None, 1):
            raise unsupported("n", "Only n=1 is supported.")
        self.catalog.require(body.model)
        metadata = dict(body.metadata or {})
        session_id = _session_id(metadata.get("session_id"))
        conversation = parse_conversation(body.messages, "messages", ("text",))
        prompt = conversation.prompt if session_id is not None else conversation.as_prompt()
        options = run_options(
            "messages",
            prompt=prompt,
            model=body.model,
            system_prompt=conversation.system,
            output_format=output_format(body.response_format, "response_format"),
        )
        return await self.port.create(owner_key_id, session_id, options)

    async def chat(self, owner_key_id: UUID, body: ChatCompletionRequest, run: PortRun) -> ChatCompletion:
        outcome = ChatOutcome()
        async for frame in _frames(self.port.run_events(owner_key_id, run.id)):
            if frame is not None:
                outcome.feed(frame.event, msgspec.json.decode(frame.data))
        if outcome.failed:
            error = outcome.error or {}
            raise OpenAIError(
                500,
                str(error.get("message") or "The agent run failed."),
                code=str(error.get("code") or "AGENT_ERROR").lower(),
                type="server_error",
                # A failed agent run must not be started again by the client's automatic retries (a 503 may be).
                headers={"X-Session-ID": str(run.session_id), "X-Run-ID": str(run.id), "x-should-retry": "false"},
            )
        return chat_completion(f"chatcmpl-{run.id.hex}", body.model, int(run.created_at.timestamp()), outcome)

    async def chat_stream(self, owner_key_id: UUID, body: ChatCompletionRequest, run: PortRun) -> AsyncIterator[bytes]:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        chunker = ChatChunker(f"chatcmpl-{run.id.hex}", body.model, int(run.created_at.timestamp()), include_usage)
        yield chunker.start()
        async for batch in self.port.run_events(owner_key_id, run.id):
            if batch is None:
                yield PING_FRAME
                continue
            out = b"".join(chunker.feed(f.event, msgspec.json.decode(f.data)) for f in batch)
            if out:
                yield out

    # -- responses -------------------------------------------------------------------------------------
    async def start_response(self, owner_key_id: UUID, body: ResponseCreateRequest) -> tuple[PortRun, ResponseMeta]:
        refuse_unsupported(body)
        self.catalog.require(body.model)
        session_id: UUID | None = None
        if body.previous_response_id is not None:
            previous = run_id_of(body.previous_response_id)
            if previous is None:
                raise self._response_not_found(body.previous_response_id, "previous_response_id")
            try:
                session_id = (await self.port.get(owner_key_id, previous)).session_id
            except ApiError as exc:
                if exc.status == 404:
                    raise self._response_not_found(body.previous_response_id, "previous_response_id") from exc
                raise
        items: list[dict[str, Any]] = (
            [{"role": "user", "content": body.input}] if isinstance(body.input, str) else list(body.input)
        )
        conversation = parse_conversation(items, "input", ("input_text",), extra_system=body.instructions)
        text_format = (body.text or {}).get("format")
        options = run_options(
            "input",
            prompt=conversation.as_prompt(),
            model=body.model,
            system_prompt=conversation.system,
            output_format=output_format(text_format, "text.format"),
        )
        run = await self.port.create(owner_key_id, session_id, options)
        meta = ResponseMeta(
            model=body.model,
            instructions=body.instructions,
            metadata=dict(body.metadata or {}),
            previous_response_id=body.previous_response_id,
            background=bool(body.background),
        )
        return run, meta

    def builder(self, run: PortRun, meta: ResponseMeta) -> ResponseBuilder:
        return ResponseBuilder(run.id, run.session_id, int(run.created_at.timestamp()), meta)

    async def complete_response(self, owner_key_id: UUID, run: PortRun, meta: ResponseMeta) -> ResponseObject:
        builder = self.builder(run, meta)
        async for frame in _frames(self.port.run_events(owner_key_id, run.id)):
            if frame is not None:
                builder.feed(frame.event, self._data(frame))
        return builder.snapshot()

    @staticmethod
    def _data(frame: SSEFrame) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.json.decode(frame.data)
        if frame.event == "done":
            data["ended_at"] = _ended_at(frame)
        return data

    async def response_events(
        self, owner_key_id: UUID, run: PortRun, meta: ResponseMeta, starting_after: int = -1
    ) -> AsyncIterator[bytes]:
        """The Responses stream of a run from its first event, items with sequence_number > starting_after."""
        builder = self.builder(run, meta)

        def encode(items: list[dict[str, Any]]) -> bytes:
            return b"".join(
                b"event: " + item["type"].encode() + b"\ndata: " + msgspec.json.encode(item) + b"\n\n"
                for item in items
                if item["sequence_number"] > starting_after
            )

        first = encode(builder.start())
        if first:
            yield first
        async for batch in self.port.run_events(owner_key_id, run.id):
            if batch is None:
                yield PING_FRAME
                continue
            out = b"".join(encode(builder.feed(f.event, self._data(f))) for f in batch)
            if out:
                yield out

    @staticmethod
    def _response_not_found(value: str, param: str | None = None) -> OpenAIError:
        code = "previous_response_not_found" if param == "previous_response_id" else "response_not_found"
        return OpenAIError(404, f"No response found with id '{value}'.", param=param, code=code)

    async def find_run(self, owner_key_id: UUID, response_id_value: str) -> PortRun:
        run_id = run_id_of(response_id_value)
        if run_id is None:
            raise self._response_not_found(response_id_value)
        try:
            return await self.port.get(owner_key_id, run_id)
        except ApiError as exc:
            if exc.status == 404:
                raise self._response_not_found(response_id_value) from exc
            raise

    async def meta_of(self, owner_key_id: UUID, run: PortRun) -> ResponseMeta:
        """What a retrieved response says besides its run (the request's own metadata is not kept yet)."""
        model = run.input.get("model")
        if not model:
            model = (await self.sessions.get(run.session_id, owner_key_id)).model
        return ResponseMeta(model=str(model or ""), instructions=run.input.get("system_prompt"))

    async def retrieve(self, owner_key_id: UUID, run: PortRun) -> ResponseObject:
        return response_from_run(run, await self.meta_of(owner_key_id, run))

    async def cancel(self, owner_key_id: UUID, run: PortRun, wait: float = 10.0) -> ResponseObject:
        run = await self.port.cancel(owner_key_id, run.id)
        if not run.ended:
            run = await self.port.wait(owner_key_id, run.id, wait)
        return await self.retrieve(owner_key_id, run)

    async def delete(self, owner_key_id: UUID, run: PortRun) -> None:
        await self.port.delete(owner_key_id, run.id)

    def input_items(self, run: PortRun) -> InputItemList:
        items: list[InputMessage] = []
        hexid = run.id.hex
        system = run.input.get("system_prompt")
        if system:
            items.append(
                InputMessage(
                    id=f"msg_in_{hexid}_0",
                    type="message",
                    role="system",
                    status="completed",
                    content=[InputText(type="input_text", text=str(system))],
                )
            )
        items.append(
            InputMessage(
                id=f"msg_in_{hexid}_{len(items)}",
                type="message",
                role="user",
                status="completed",
                content=[InputText(type="input_text", text=str(run.input.get("prompt", "")))],
            )
        )
        return InputItemList(object="list", data=items, first_id=items[0].id, last_id=items[-1].id, has_more=False)
