"""The REAL bundled Claude Code CLI, driven through the HTTP API of two instances, against a fake Anthropic
Messages API on loopback (tests/claude/fake_messages_api.py).

Nothing leaves 127.0.0.1: the API base URL is the fake, HOME and the config dirs are temporary, telemetry,
updates, error reports and retries are off, and any proxied connection would go to a dead loopback port."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.claude.fake_messages_api import FakeMessagesApi
from tests.claude.harness import ClaudeEnv, child_pids, claude_overrides
from tests.helpers import wait_for
from tests.instances import Instance, make_settings, start_instance
from tests.integration.test_runs import next_event, run_to_done, session_status, start_stream
from tests.servers import TestServers

sdk = pytest.importorskip("claude_agent_sdk")
BUNDLED = Path(sdk.__file__).parent / "_bundled" / "claude"
pytestmark = pytest.mark.skipif(not BUNDLED.exists(), reason="the SDK wheel has no bundled CLI")

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["answer", "n"],
}
OFFLINE_ENV = {
    "ANTHROPIC_API_KEY": "dummy",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}


@pytest.fixture(scope="module")
async def fake_api() -> AsyncIterator[FakeMessagesApi]:
    api = await FakeMessagesApi().start()
    yield api
    await api.stop()


@pytest.fixture(scope="module")
def real_env(fake_api: FakeMessagesApi) -> Iterator[ClaudeEnv]:
    root = Path(tempfile.mkdtemp(prefix="agentapi-real-cli-"))
    (root / "work").mkdir()
    (root / "home").mkdir()
    values = {**OFFLINE_ENV, "HOME": str(root / "home"), "ANTHROPIC_BASE_URL": fake_api.base_url}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    yield ClaudeEnv(
        root=root, record_dir=root, cwd=root / "work", config_dirs={"a": root / "cfg-a", "b": root / "cfg-b"}
    )
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def real_a(servers: TestServers, real_env: ClaudeEnv) -> AsyncIterator[Instance]:
    settings = make_settings(servers, f"test-real-a-{secrets.token_hex(3)}", **claude_overrides(real_env, "a", ""))
    inst = await start_instance("real-a", settings)
    yield inst
    await inst.stop()


@pytest.fixture(scope="module")
async def real_b(servers: TestServers, real_env: ClaudeEnv) -> AsyncIterator[Instance]:
    settings = make_settings(servers, f"test-real-b-{secrets.token_hex(3)}", **claude_overrides(real_env, "b", ""))
    inst = await start_instance("real-b", settings)
    yield inst
    await inst.stop()


@pytest.fixture
async def no_leftover_cli() -> AsyncIterator[None]:
    before = child_pids()
    yield

    async def settled() -> bool:
        return not (child_pids() - before)

    await wait_for(settled, timeout=15, what="the CLI processes of this test to exit")


def texts(events: list[Any], role: str = "assistant") -> list[str]:
    return [
        b["text"]
        for e in events
        if e.event == "message" and e.data["role"] == role
        for b in e.data["content"]
        if b["type"] == "text"
    ]


@pytest.mark.usefixtures("no_leftover_cli")
async def test_prompt_round_trip(real_a: Instance, fake_api: FakeMessagesApi, api_key: str) -> None:
    async with real_a.client(api_key) as ca:
        events = await run_to_done(ca, "/api/v1/query", {"prompt": "hello world", "model": "claude-sonnet-5"})
    names = [e.event for e in events]
    assert names[0] == "init" and names[-2:] == ["result", "done"]
    assert events[0].data["model"] == "claude-sonnet-5" and "Bash" in events[0].data["tools"]
    assert texts(events) == ["Echo: hello world (user turns: 1)"]
    result = events[-2].data
    assert result["is_error"] is False and result["result"] == "Echo: hello world (user turns: 1)"
    assert result["usage"]["input_tokens"] == 12 and result["usage"]["output_tokens"] == 7
    assert result["total_cost_usd"] > 0 and result["num_turns"] == 1
    assert events[-1].data == {"reason": "completed"}
    assert any(r.get("model") == "claude-sonnet-5" for r in fake_api.requests)


@pytest.mark.usefixtures("no_leftover_cli")
async def test_tool_use(real_a: Instance, api_key: str) -> None:
    async with real_a.client(api_key) as ca:
        events = await run_to_done(ca, "/api/v1/query", {"prompt": "tool echo from-bash", "allowed_tools": ["Bash"]})
    blocks = [b for e in events if e.event == "message" for b in e.data["content"]]
    use = next(b for b in blocks if b["type"] == "tool_use")
    assert use["name"] == "Bash" and use["input"]["command"] == "echo from-bash"
    result = next(b for b in blocks if b["type"] == "tool_result")
    assert result["tool_use_id"] == use["id"] and result["content"] == "from-bash" and result["is_error"] is False
    assert texts(events)[-1] == "Tool said: from-bash"
    assert events[-1].data == {"reason": "completed"}


@pytest.mark.usefixtures("no_leftover_cli")
async def test_tool_approval_and_ask_user_question(
    real_a: Instance, real_b: Instance, real_env: ClaudeEnv, api_key: str
) -> None:
    target = real_env.cwd / "approved.txt"
    async with real_a.client(api_key) as ca, real_b.client(api_key) as cb:
        resp, events = await start_stream(ca, "/api/v1/query", {"prompt": f"tool touch {target}"})
        try:
            sid = (await next_event(events, "init", timeout=30)).data["session_id"]
            question = (await next_event(events, "question", timeout=30)).data
            assert question["kind"] == "permission" and question["tool_name"] == "Bash"
            assert question["tool_input"]["command"] == f"touch {target}"
            assert (await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "allow"})).status_code == 200
            assert (await next_event(events, "done", timeout=30)).data == {"reason": "completed"}
        finally:
            await resp.aclose()
        assert target.exists()

        resp, events = await start_stream(ca, "/api/v1/query", {"prompt": "ask"})
        try:
            sid = (await next_event(events, "init", timeout=30)).data["session_id"]
            question = (await next_event(events, "question", timeout=30)).data
            assert question["kind"] == "ask_user_question" and question["options"] == ["red", "blue"]
            reply = await cb.post(
                f"/api/v1/sessions/{sid}/answer", json={"answer": "blue", "question_id": question["question_id"]}
            )
            assert reply.status_code == 200
            result = await next_event(events, "result", timeout=30)
            assert '"Which colour?"="blue"' in result.data["result"]
        finally:
            await resp.aclose()


@pytest.mark.usefixtures("no_leftover_cli")
async def test_interrupt_mid_stream_from_the_other_instance(real_a: Instance, real_b: Instance, api_key: str) -> None:
    async with real_a.client(api_key) as ca, real_b.client(api_key) as cb:
        resp, events = await start_stream(ca, "/api/v1/query", {"prompt": "slow", "include_partial_messages": True})
        try:
            sid = (await next_event(events, "init", timeout=30)).data["session_id"]
            for _ in range(3):
                partial = await next_event(events, "partial", timeout=30)
            assert partial.data["type"] == "content_block_delta"
            assert (await cb.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
            result = await next_event(events, "result", timeout=10)
            done = await next_event(events, "done", timeout=10)
        finally:
            await resp.aclose()
    assert done.data == {"reason": "interrupted"}
    assert result.data["stop_reason"] == "interrupted" and result.data["is_error"] is False
    async with real_b.client(api_key) as cb:
        session = await session_status(cb, sid)
        assert session["status"] == "interrupted"
        messages = (await cb.get(f"/api/v1/sessions/{sid}/messages")).json()["items"]
        said = " ".join(
            b["text"]
            for m in messages
            if m["event"] == "message" and m["data"]["role"] == "assistant"
            for b in m["data"]["content"]
            if b["type"] == "text"
        )
        assert said.startswith("w0 ") and "w399" not in said  # stopped mid-stream


@pytest.mark.usefixtures("no_leftover_cli")
async def test_resume_on_the_other_instance(
    real_a: Instance, real_b: Instance, real_env: ClaudeEnv, api_key: str
) -> None:
    async with real_a.client(api_key) as ca, real_b.client(api_key) as cb:
        first = await run_to_done(ca, "/api/v1/query", {"prompt": "remember me"})
        assert texts(first) == ["Echo: remember me (user turns: 1)"]
        sid = first[0].data["session_id"]
        # a's local copy is gone and b never had one: the conversation comes from Postgres.
        shutil.rmtree(real_env.config_dirs["a"], ignore_errors=True)
        second = await run_to_done(cb, f"/api/v1/sessions/{sid}/resume", {"prompt": "again"})
        assert texts(second) == ["Echo: again (user turns: 2)"]
        assert second[-1].data == {"reason": "completed"}


@pytest.mark.usefixtures("no_leftover_cli")
async def test_structured_output(real_b: Instance, api_key: str) -> None:
    async with real_b.client(api_key) as cb:
        body = {"prompt": "give", "output_format": {"type": "json_schema", "schema": SCHEMA}}
        single = await cb.post("/api/v1/query/single", json=body)
    assert single.status_code == 200, single.text
    result = single.json()
    assert result["is_error"] is False and result["structured_output"] == {"answer": "give", "n": 42}


@pytest.mark.usefixtures("no_leftover_cli")
async def test_api_error_surfaces_as_error_event(real_a: Instance, api_key: str) -> None:
    async with real_a.client(api_key) as ca:
        events = await run_to_done(ca, "/api/v1/query", {"prompt": "fail"})
    names = [e.event for e in events]
    assert names[-3:] == ["result", "error", "done"]
    assert events[-3].data["is_error"] is True
    error = events[-2].data
    assert error["code"] == "AGENT_ERROR" and "500" in error["message"]
    assert events[-1].data == {"reason": "error"}
