"""The OpenAI-compatible API (/v1, SPEC §10) driven by the official `openai` client, sync and async, against two
real instances (each served over HTTP on its own port). The sync client runs in a worker thread: the instances
share the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.helpers import wait_for
from tests.instances import Instance, InstanceFactory


def aclient(inst: Instance, key: str) -> AsyncOpenAI:
    # No retries: a 409 or 429 must surface as the typed error, not be retried into a pass.
    return AsyncOpenAI(base_url=f"{inst.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def sclient(inst: Instance, key: str) -> OpenAI:
    return OpenAI(base_url=f"{inst.base_url}/v1", api_key=key, max_retries=0, timeout=30)


async def messages_of(inst: Instance, key: str, session_id: str) -> list[dict[str, Any]]:
    async with inst.client(key) as c:
        r = await c.get(f"/api/v1/sessions/{session_id}/messages")
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


async def persisted_run(inst: Instance, key: str, session_id: str, runs: int = 1) -> list[dict[str, Any]]:
    """The session's persisted events once `runs` runs have their `done` in Postgres (it lands just after)."""

    async def probe() -> list[dict[str, Any]]:
        items = await messages_of(inst, key, session_id)
        return items if sum(e["event"] == "done" for e in items) == runs else []

    return await wait_for(probe, timeout=15, what="the run's events in Postgres")


# -- models ------------------------------------------------------------------------------------------------


async def test_models_list_and_retrieve(a: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["demo"]
        assert models.data[0].object == "model" and models.data[0].owned_by == "agent-api"
        model = await client.models.retrieve("demo")
        assert model.id == "demo"
        with pytest.raises(openai.NotFoundError) as err:
            await client.models.retrieve("gpt-4o")
        assert err.value.code == "model_not_found"
        assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]


# -- chat completions --------------------------------------------------------------------------------------


async def test_chat_completion_plain_async(a: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": "hello there"}]
        )
        completion = raw.parse()
        session_id = raw.headers["x-session-id"]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-") and completion.model == "demo"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "Echo: hello there"
    assert choice.finish_reason == "stop" and choice.index == 0
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 and completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 5
    # A normal run: its events are the session's messages.
    events = await persisted_run(a, api_key, session_id)
    said = [
        b["text"]
        for e in events
        if e["event"] == "message" and e["data"]["role"] == "assistant"
        for b in e["data"]["content"]
    ]
    assert "".join(said) == "Echo: hello there"
    assert [e["event"] for e in events if e["event"] != "message"] == ["init", "result", "done"]
    assert {UUID(e["run_id"]).hex for e in events} == {completion.id.removeprefix("chatcmpl-")}


async def test_sync_client_chat_plain_and_streamed(a: Instance, api_key: str) -> None:
    def work() -> tuple[Any, list[Any], str]:
        with sclient(a, api_key) as client:
            completion = client.chat.completions.create(
                model="demo",
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": [{"type": "text", "text": "what now"}]},
                ],
            )
            with client.chat.completions.with_streaming_response.create(
                model="demo", messages=[{"role": "user", "content": "one two"}], stream=True
            ) as response:
                session_id = response.headers["x-session-id"]
                chunks = list(response.parse())
            return completion, chunks, session_id

    completion, chunks, session_id = await asyncio.to_thread(work)
    content = completion.choices[0].message.content
    # Earlier turns reach the agent as context, the last user message as the prompt.
    assert content.startswith("Echo: The conversation so far:")
    assert "User: hi" in content and "Assistant: Hello!" in content and content.endswith("what now")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: one two"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert session_id


async def test_chat_stream_async_with_usage(a: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as client:
        stream = await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "stream me please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream me please"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 3 and chunks[-1].usage.completion_tokens == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def test_chat_continues_session_on_other_instance(a: Instance, b: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as ca, aclient(b, api_key) as cb:
        first = await ca.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": "first turn"}]
        )
        session_id = first.headers["x-session-id"]
        second = await cb.chat.completions.with_raw_response.create(
            model="demo",
            messages=[
                {"role": "user", "content": "first turn"},
                {"role": "assistant", "content": "Echo: first turn"},
                {"role": "user", "content": "second turn"},
            ],
            metadata={"session_id": session_id},
        )
        assert second.headers["x-session-id"] == session_id
        # Only the last user message is the new prompt: the session holds the history.
        assert second.parse().choices[0].message.content == "Echo: second turn"
        stream = await cb.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "third"}],
            metadata={"session_id": session_id},
            stream=True,
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "Echo: third"
    events = await persisted_run(a, api_key, session_id, runs=3)
    assert len({e["run_id"] for e in events}) == 3


# -- errors ------------------------------------------------------------------------------------------------


async def test_typed_errors(a: Instance, api_key: str, other_api_key: str) -> None:
    async with aclient(a, "not-a-key") as bad:
        with pytest.raises(openai.AuthenticationError) as auth:
            await bad.models.list()
        assert auth.value.status_code == 401 and auth.value.code == "invalid_api_key"
    async with aclient(a, api_key) as client, aclient(a, other_api_key) as other:
        for params, name in [
            ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
            ({"n": 2}, "n"),
            ({"logprobs": True}, "logprobs"),
            ({"audio": {"voice": "alloy", "format": "mp3"}, "modalities": ["text", "audio"]}, "audio"),
            ({"temperature": 0.2}, "temperature"),
        ]:
            with pytest.raises(openai.BadRequestError) as bad_request:
                await client.chat.completions.create(
                    model="demo", messages=[{"role": "user", "content": "x"}], **params
                )
            assert bad_request.value.param == name, bad_request.value.body
            assert bad_request.value.code == "unsupported_parameter"
        with pytest.raises(openai.BadRequestError) as unknown:
            await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "x"}], extra_body={"frobnicate": 1}
            )
        assert unknown.value.param == "frobnicate", unknown.value.body
        with pytest.raises(openai.BadRequestError) as image:
            await client.chat.completions.create(
                model="demo",
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
            )
        assert image.value.param == "messages[0].content[0].type"
        with pytest.raises(openai.BadRequestError) as last:
            await client.chat.completions.create(model="demo", messages=[{"role": "assistant", "content": "x"}])
        assert last.value.param == "messages"
        with pytest.raises(openai.NotFoundError) as model:
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert model.value.param == "model"
        # Another key's session is not found, never continued.
        first = await client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": "mine"}]
        )
        session_id = first.headers["x-session-id"]
        with pytest.raises(openai.NotFoundError) as foreign:
            await other.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "x"}], metadata={"session_id": session_id}
            )
        assert foreign.value.code == "session_not_found"
        # Busy: a run is active in the session.
        stream = await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "sleep 3"}],
            metadata={"session_id": session_id},
            stream=True,
        )
        with pytest.raises(openai.ConflictError) as busy:
            await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "x"}], metadata={"session_id": session_id}
            )
        assert busy.value.code == "session_busy" and busy.value.status_code == 409
        await stream.close()
        # A failed run is a server error the client is told not to retry.
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "fail boom"}])
        assert failed.value.code == "agent_error" and failed.value.body["message"] == "boom"  # type: ignore[index]
        assert failed.value.response.headers["x-should-retry"] == "false"


async def test_rate_limit_is_typed(instance_factory: InstanceFactory, api_key: str) -> None:
    inst: Instance = await instance_factory("limited", app__rate_limit_per_minute=2)
    async with aclient(inst, api_key) as client:
        await client.models.list()
        await client.models.list()
        with pytest.raises(openai.RateLimitError) as limited:
            await client.models.list()
    assert limited.value.status_code == 429 and limited.value.code == "rate_limited"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.body["type"] == "rate_limit_error"  # type: ignore[index]


async def test_v1_in_openapi(a: Instance) -> None:
    async with httpx.AsyncClient(base_url=a.base_url) as c:
        doc = (await c.get("/docs/openapi.json")).json()
    for path in ("/v1/models", "/v1/chat/completions", "/v1/responses", "/v1/responses/{response_id}"):
        assert path in doc["paths"], sorted(doc["paths"])
    op = doc["paths"]["/v1/chat/completions"]["post"]
    assert op["tags"] == ["OpenAI-compatible"] and "409" in op["responses"] and "400" in op["responses"]


# -- responses ---------------------------------------------------------------------------------------------


async def test_responses_plain_and_streamed(a: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as client:
        response = await client.responses.create(model="demo", input="hello responses", instructions="Be nice.")
        assert response.object == "response" and response.id.startswith("resp_")
        assert response.status == "completed" and response.output_text == "Echo: hello responses"
        assert response.instructions == "Be nice." and response.model == "demo"
        assert response.usage is not None and response.usage.input_tokens == 2 and response.usage.total_tokens > 2
        assert response.output[0].type == "message" and response.output[0].status == "completed"
        stream = await client.responses.create(model="demo", input="one two three", stream=True)
        events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Echo: one two three"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "Echo: one two three"
    assert events[0].response.status == "in_progress"


async def test_responses_background_poll_and_resume_on_other_instance(a: Instance, b: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as ca, aclient(b, api_key) as cb:
        started = await ca.responses.create(model="demo", input="sleep 1.5", background=True)
        assert started.status in ("queued", "in_progress") and started.background is True

        async def done() -> Any:
            r = await cb.responses.retrieve(started.id)
            return r if r.status == "completed" else None

        # Read a few events on A, then resume on B after the last one seen: every event exactly once, in order.
        head: list[Any] = []
        stream = await ca.responses.retrieve(started.id, stream=True)
        async for event in stream:
            head.append(event)
            if len(head) == 5:
                break
        await stream.close()
        tail = [e async for e in await cb.responses.retrieve(started.id, stream=True, starting_after=4)]
        seen = head + tail
        assert [e.sequence_number for e in seen] == list(range(len(seen)))
        assert seen[-1].type == "response.completed"
        ticks = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
        assert ticks.startswith("tick 1") and "tick 15" in ticks
        final = await wait_for(done, timeout=20, what="background response to complete")
        assert final.output_text == "slept 1.5s"


async def test_responses_previous_response_id_across_instances(a: Instance, b: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as ca, aclient(b, api_key) as cb:
        first = await ca.responses.with_raw_response.create(model="demo", input="first")
        second = await cb.responses.with_raw_response.create(
            model="demo", input=[{"role": "user", "content": "second"}], previous_response_id=first.parse().id
        )
        assert second.headers["x-session-id"] == first.headers["x-session-id"]
        assert second.parse().previous_response_id == first.parse().id
        assert second.parse().output_text == "Echo: second"
        with pytest.raises(openai.NotFoundError):
            await cb.responses.create(model="demo", input="x", previous_response_id="resp_" + "0" * 32)


async def test_responses_cancel_from_other_instance(a: Instance, b: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as ca, aclient(b, api_key) as cb:
        started = await ca.responses.create(model="demo", input="sleep 30", background=True)
        t0 = time.monotonic()
        cancelled = await cb.responses.cancel(started.id)
        assert cancelled.status == "cancelled", cancelled
        assert time.monotonic() - t0 < 15
        again = await ca.responses.retrieve(started.id)
        assert again.status == "cancelled"
        events = [e async for e in await cb.responses.retrieve(started.id, stream=True)]
        assert events[-1].type == "response.incomplete" and events[-1].response.status == "cancelled"


async def test_responses_input_items_and_isolation(a: Instance, b: Instance, api_key: str, other_api_key: str) -> None:
    async with aclient(a, api_key) as client, aclient(b, api_key) as on_b, aclient(a, other_api_key) as other:
        response = await client.responses.create(model="demo", input="items please", instructions="Sys.")
        items = await on_b.responses.input_items.list(response.id)
        roles = [(i.role, i.content[0].text) for i in items.data]  # type: ignore[union-attr]
        assert roles == [("system", "Sys."), ("user", "items please")]
        retrieved = await on_b.responses.retrieve(response.id)
        assert retrieved.instructions == "Sys." and retrieved.output_text == "Echo: items please"
        assert retrieved.status == "completed" and retrieved.usage is not None
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.cancel(response.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_nope")
        with pytest.raises(openai.BadRequestError) as unsupported:
            await client.responses.create(model="demo", input="x", tools=[{"type": "web_search"}])
        assert unsupported.value.param == "tools"


async def test_responses_delete(a: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as client:
        response = await client.responses.create(model="demo", input="delete me")
        deleted = await client.responses.delete(response.id)
        assert deleted is None
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)


async def test_sync_client_responses(a: Instance, b: Instance, api_key: str) -> None:
    def work() -> tuple[Any, list[str], Any]:
        with sclient(a, api_key) as ca, sclient(b, api_key) as cb:
            created = ca.responses.create(model="demo", input="sync please")
            streamed = [e.type for e in cb.responses.create(model="demo", input="sync stream", stream=True)]
            background = ca.responses.create(model="demo", input="sleep 0.3", background=True)
            deadline = time.monotonic() + 20
            polled = cb.responses.retrieve(background.id)
            while polled.status != "completed" and time.monotonic() < deadline:
                time.sleep(0.05)
                polled = cb.responses.retrieve(background.id)
            return created, streamed, polled

    created, streamed, polled = await asyncio.to_thread(work)
    assert created.output_text == "Echo: sync please"
    assert streamed[0] == "response.created" and streamed[-1] == "response.completed"
    assert polled.status == "completed" and polled.output_text == "slept 0.3s"


async def test_error_shape_for_malformed_requests(a: Instance, api_key: str) -> None:
    """Bodies the client would never send still answer in OpenAI's shape with the right status."""
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=f"{a.base_url}/v1", headers=headers) as c:
        cases = [
            (await c.post("/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 400, "model"),
            (await c.post("/chat/completions", json={"model": "demo", "messages": []}), 400, "messages"),
            (
                await c.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
                400,
                None,
            ),
            (await c.post("/chat/completions", json={"model": "demo", "messages": "hi"}), 400, "messages"),
            (
                await c.post(
                    "/chat/completions",
                    json={
                        "model": "demo",
                        "messages": [{"role": "user", "content": "x"}],
                        "metadata": {"session_id": "nope"},
                    },
                ),
                400,
                "metadata.session_id",
            ),
            (await c.post("/responses", json={"model": "demo", "input": "x" * 100_001}), 400, "input"),
            (
                await c.post(
                    "/responses", content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"}
                ),
                413,
                None,
            ),
            (await c.get("/responses/resp_0123"), 404, None),
            (await c.get("/models/nope"), 404, None),
        ]
    got = [(r.status_code, r.json()["error"]["param"], r.json()["error"]["message"][:80]) for r, _, _ in cases]
    for response, status, param in cases:
        assert response.status_code == status and response.json()["error"]["param"] == param, got
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["content-type"].startswith("application/json"), response.headers
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert error["param"] == param, (response.request.url, error)
    async with httpx.AsyncClient(base_url=f"{a.base_url}/v1") as c:
        missing = await c.get("/models")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"


async def test_failed_runs(a: Instance, api_key: str) -> None:
    async with aclient(a, api_key) as client:
        failed = await client.responses.create(model="demo", input="fail boom")
        assert failed.status == "failed" and failed.error is not None
        assert failed.error.message == "boom" and failed.error.code == "agent_error"
        events = [e async for e in await client.responses.create(model="demo", input="fail bang", stream=True)]
        assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
        assert events[-1].response.error.message == "bang"  # type: ignore[union-attr]
        stream = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "fail chat"}], stream=True
        )
        with pytest.raises(openai.APIError) as streamed:
            async for _ in stream:
                pass
        assert streamed.value.message == "chat"


async def test_readme_example(a: Instance, api_key: str) -> None:
    """The README's "Use it from the OpenAI SDK" example runs as written (against this instance)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Use it from the OpenAI SDK", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:8000/v1" in code
    code = code.replace("http://127.0.0.1:8000/v1", f"{a.base_url}/v1")
    out = io.StringIO()

    def work() -> None:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {"KEY": api_key})

    await asyncio.to_thread(work)
    printed = out.getvalue()
    assert "['demo']" in printed and "Echo: hello" in printed and "response.completed" in printed, printed


async def test_pings_do_not_reach_the_client(instance_factory: InstanceFactory, api_key: str) -> None:
    """`: ping` comments go out while the agent is silent; the client skips them."""
    inst: Instance = await instance_factory("pings", runs__ping_interval=0.1)
    async with httpx.AsyncClient(base_url=f"{inst.base_url}/v1", headers={"Authorization": f"Bearer {api_key}"}) as c:
        async with c.stream("POST", "/responses", json={"model": "demo", "input": "ask what?", "stream": True}) as r:
            lines: list[str] = []
            async for line in r.aiter_lines():
                lines.append(line)
                if sum(x == ": ping" for x in lines) >= 2:
                    break
    session_id = r.headers["x-session-id"]
    run_hex = r.headers["x-run-id"].replace("-", "")
    async with aclient(inst, api_key) as client:
        # The client follows the still-waiting run (pings and all) on a new stream, then the answer lets it end.
        stream = await client.responses.retrieve(f"resp_{run_hex}", stream=True)
        events: list[Any] = []

        async def read() -> None:
            async for event in stream:
                events.append(event)

        reader = asyncio.create_task(read())
        # Not a race guard (the answer may come at any moment): some ping intervals of silence for the client to skip.
        await asyncio.sleep(0.3)
        async with inst.client(api_key) as c:
            answered = await c.post(f"/api/v1/sessions/{session_id}/answer", json={"answer": "this"})
            assert answered.status_code == 200, answered.text
        await asyncio.wait_for(reader, 20)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "Answer: this"
