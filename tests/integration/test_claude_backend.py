"""The claude backend through the HTTP API, two instances, with a scripted fake CLI as `cli_path`.

The real SDK runs (transport, option-to-flag mapping, control protocol, transcript mirroring, resume
materialization); only the CLI is scripted (tests/claude/fake_cli.py)."""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.asgi import build_alchemy_config
from app.db.models import AgentTranscriptEntry

pytest.importorskip("claude_agent_sdk")

from tests.claude.harness import (
    ClaudeEnv,
    assert_no_orphans,
    child_pids,
    claude_a,
    claude_b,
    claude_env,
)
from tests.helpers import assert_problem
from tests.instances import Instance, make_settings
from tests.integration.test_runs import new_session, next_event, run_to_done, session_status, start_stream
from tests.servers import TestServers

__all__ = ("claude_a", "claude_b", "claude_env")  # fixtures used by name

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}}}


def names(events: list[Any]) -> list[str]:
    return [e.event for e in events]


def texts(events: list[Any]) -> list[str]:
    """The agent's side (the user's turns are `message` events too)."""
    return [
        b["text"]
        for e in events
        if e.event == "message" and e.data["role"] != "user"
        for b in e.data["content"]
        if b["type"] == "text"
    ]


async def cli_run(
    env: ClaudeEnv, client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Runs to `done`; returns the events and the record (pid, argv) of the one CLI process it started."""
    mark = env.mark()
    events = await run_to_done(client, path, body)
    records = env.since(mark)
    assert len(records) == 1, records
    await assert_no_orphans([records[0]["pid"]])
    return events, records[0]


def flag_value(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


async def transcript_rows(servers: TestServers, sdk_session: str | None) -> int:
    """How many agent transcript entries Postgres holds for one SDK session."""
    config = build_alchemy_config(make_settings(servers, "check"))
    count = select(func.count()).select_from(AgentTranscriptEntry).where(AgentTranscriptEntry.session_id == sdk_session)
    try:
        async with config.get_session() as db:
            rows: int = (await db.execute(count)).scalar_one()
            return rows
    finally:
        await config.get_engine().dispose()


async def test_prompt_round_trip(claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str) -> None:
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        events, record = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "hello there"})
        assert names(events) == ["init", "message", "message", "result", "done"]
        init, message, result = events[0].data, events[2].data, events[3].data
        assert events[1].data["role"] == "user"
        assert init["model"] == "claude-fake-1" and init["permission_mode"] == "default"
        assert init["tools"] == ["AskUserQuestion", "Bash", "Read", "Write"]
        assert "agent_session_id" not in init and "cwd" not in init["agent"]
        assert init["agent"]["claude_code_version"] == "0.0.0-fake"
        assert message["role"] == "assistant" and message["model"] == "claude-fake-1" and message["uuid"]
        assert message["content"] == [{"type": "text", "text": "Echo: hello there (earlier turns: 0)"}]
        assert message["usage"] == {"input_tokens": 10, "output_tokens": 5}
        assert result["is_error"] is False and result["result"] == "Echo: hello there (earlier turns: 0)"
        assert result["usage"]["input_tokens"] == 10 and result["usage"]["output_tokens"] == 5
        assert result["usage"]["cache_read_input_tokens"] == 3
        assert result["total_cost_usd"] == 0.0125 and result["num_turns"] == 1
        assert result["stop_reason"] == "end_turn" and result["structured_output"] is None
        assert result["model_usage"]["claude-fake-1"]["costUSD"] == 0.0125
        assert result["duration_ms"] >= 0 and result["agent_duration_ms"] == 12 and result["duration_api_ms"] == 5
        assert events[-1].data == {"reason": "completed"}
        session = await session_status(cb, init["session_id"])
        assert session["status"] == "completed" and session["total_cost_usd"] == 0.0125
        assert session["usage"] == {"input_tokens": 10, "output_tokens": 5}
        argv = record["argv"]
        assert "--session-mirror" in argv and "--setting-sources=" in argv
        assert flag_value(argv, "--resume") is None
        assert not child_pids() & {record["pid"]}


async def test_request_options_reach_the_cli(claude_a: Instance, claude_env: ClaudeEnv, api_key: str) -> None:
    body = {
        "prompt": "json",
        "model": "claude-sonnet-5",
        "permission_mode": "acceptEdits",
        "allowed_tools": ["Read", "Bash(git log:*)"],
        "disallowed_tools": ["Write"],
        "max_turns": 3,
        "system_prompt": "Be brief.",
        "output_format": {"type": "json_schema", "schema": SCHEMA},
    }
    async with claude_a.client(api_key) as ca:
        events, record = await cli_run(claude_env, ca, "/api/v1/query", body)
        argv = record["argv"]
        assert flag_value(argv, "--model") == "claude-sonnet-5"
        assert flag_value(argv, "--permission-mode") == "acceptEdits"
        assert flag_value(argv, "--allowedTools") == "Read,Bash(git log:*)"
        assert flag_value(argv, "--disallowedTools") == "Write"
        assert flag_value(argv, "--max-turns") == "3"
        assert flag_value(argv, "--system-prompt") == "Be brief."
        assert flag_value(argv, "--json-schema") is not None
        assert "--include-partial-messages" not in argv
        result = next(e.data for e in events if e.event == "result")
        assert result["structured_output"] == {"answer": "json", "n": 42}
        tool_use = events[2].data["content"][0]
        assert tool_use["type"] == "tool_use" and tool_use["name"] == "StructuredOutput"
        assert events[3].data["role"] == "user" and events[3].data["content"][0]["type"] == "tool_result"

        # Partial messages only when asked for; the default system prompt stays Claude Code's.
        events, record = await cli_run(
            claude_env, ca, "/api/v1/query", {"prompt": "hi", "include_partial_messages": True}
        )
        assert "--include-partial-messages" in record["argv"]
        assert flag_value(record["argv"], "--system-prompt") is None
        partial = next(e.data for e in events if e.event == "partial")
        assert partial["type"] == "content_block_delta" and partial["text"] == "Echo: hi (earlier turns: 0)"
        assert partial["event"]["delta"]["type"] == "text_delta"
        messages = (await ca.get(f"/api/v1/sessions/{events[0].data['session_id']}/messages")).json()["items"]
        assert "partial" not in [m["event"] for m in messages]


async def test_thinking_tool_and_system_messages_are_all_mapped(
    claude_a: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca:
        events, _ = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "think"})
        assert events[1].data == {**events[1].data, "role": "user", "content": [{"type": "text", "text": "think"}]}
        assert events[2].data["content"] == [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "thought"},
        ]
        events, _ = await cli_run(
            claude_env, ca, "/api/v1/query", {"prompt": "tool Bash", "permission_mode": "bypassPermissions"}
        )
        assert names(events) == ["init", "message", "message", "message", "message", "result", "done"]
        use, res = events[2].data["content"][0], events[3].data["content"][0]
        assert use["type"] == "tool_use" and use["name"] == "Bash" and use["input"] == {"command": "touch x"}
        assert res == {"type": "tool_result", "tool_use_id": use["id"], "content": "Bash ran", "is_error": False}
        events, _ = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "extras"})
        system = [e.data for e in events if e.event == "message" and e.data["role"] == "system"]
        assert [m["subtype"] for m in system] == ["status", "task_started", "rate_limit"]
        assert system[0]["data"]["status"] == "requesting" and system[0]["content"] == []
        assert system[1]["data"]["task_id"] == "t1"
        assert system[2]["data"] == {"status": "allowed_warning", "utilization": 0.9}


async def test_unknown_tools_models_and_formats_are_422_before_any_run(
    claude_a: Instance, shared_instance: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    bad_bodies = [
        {"prompt": "hi", "allowed_tools": ["Read", "Teleport"]},
        {"prompt": "hi", "disallowed_tools": ["Bash(", "Read"]},
        {"prompt": "hi", "model": "gpt-4o"},
        {"prompt": "hi", "output_format": {"type": "text"}},
    ]
    mark = claude_env.mark()
    async with claude_a.client(api_key) as ca:
        for body in bad_bodies:
            assert_problem(await ca.post("/api/v1/query", json=body), 422, "VALIDATION_ERROR")
        assert (await ca.get("/api/v1/sessions")).json()["total"] == 0  # no session was created
        # A session stored with a model the claude backend refuses (made through a demo-backend instance, as
        # after a narrower CLAUDE_MODELS): its runs are refused before they start.
        async with shared_instance.client(api_key) as demo:
            sid = await new_session(demo, model="not-a-claude-model")
        before = await session_status(ca, sid)
        body = assert_problem(
            await ca.post(f"/api/v1/sessions/{sid}/resume", json={"prompt": "hi"}), 422, "VALIDATION_ERROR"
        )
        assert "not-a-claude-model" in body["detail"]
        assert_problem(
            await ca.post("/api/v1/query/single", json={"prompt": "hi", "session_id": sid, "allowed_tools": ["Nope"]}),
            422,
            "VALIDATION_ERROR",
        )
        after = await session_status(ca, sid)
        assert after["version"] == before["version"] and after["status"] == "idle" and after["last_run_at"] is None
        # MCP tools and rules on known tools pass.
        events = await run_to_done(
            ca, "/api/v1/query", {"prompt": "ok", "allowed_tools": ["mcp__files__read", "Bash(npm test:*)"]}
        )
        assert events[-1].data == {"reason": "completed"}
    assert len(claude_env.since(mark)) == 1  # only the valid run started a CLI


async def test_sessions_refuse_models_their_runs_would_refuse(
    claude_a: Instance, claude_b: Instance, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        body = assert_problem(await ca.post("/api/v1/sessions", json={"model": "gpt-4o"}), 422, "VALIDATION_ERROR")
        assert "gpt-4o" in body["detail"]
        assert (await ca.get("/api/v1/sessions")).json()["total"] == 0  # nothing was stored
        sid = await new_session(ca, model="claude-sonnet-4-5", title="kept")
        before = await session_status(cb, sid)
        assert_problem(await cb.patch(f"/api/v1/sessions/{sid}", json={"model": "llama-3"}), 422, "VALIDATION_ERROR")
        assert_problem(
            await cb.patch(f"/api/v1/sessions/{sid}", json={"title": "lost", "model": "llama-3"}),
            422,
            "VALIDATION_ERROR",
        )
        after = await session_status(ca, sid)
        assert after == before  # neither the model nor the title of the refused patch was applied
        patched = await cb.patch(f"/api/v1/sessions/{sid}", json={"model": "claude-opus-4-1"})
        assert patched.status_code == 200 and patched.json()["model"] == "claude-opus-4-1"
        assert (await cb.patch(f"/api/v1/sessions/{sid}", json={"model": None})).json()["model"] is None


async def test_resume_on_the_other_instance_comes_from_postgres(
    claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        first, _ = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "first"})
        sid = first[0].data["session_id"]
        # Instance a's local transcripts are gone; b never had them: only the Postgres store can resume.
        shutil.rmtree(claude_env.config_dirs["a"], ignore_errors=True)
        second, rec2 = await cli_run(claude_env, cb, f"/api/v1/sessions/{sid}/resume", {"prompt": "second"})
        assert texts(second) == ["Echo: second (earlier turns: 1)"]
        sdk_session = flag_value(rec2["argv"], "--resume")
        assert sdk_session is not None and "--fork-session" not in rec2["argv"]
        third, rec3 = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "third", "session_id": sid})
        assert texts(third) == ["Echo: third (earlier turns: 2)"]
        assert flag_value(rec3["argv"], "--resume") == sdk_session


async def test_fork_continues_under_its_own_sdk_session(
    claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        parent_events, _ = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "root"})
        parent = parent_events[0].data["session_id"]
        _, rec = await cli_run(claude_env, ca, f"/api/v1/sessions/{parent}/resume", {"prompt": "again"})
        parent_sdk = flag_value(rec["argv"], "--resume")
        fork = await cb.post(f"/api/v1/sessions/{parent}/fork", json={"title": "child"})
        assert fork.status_code == 201
        child = fork.json()["id"]
        first, rec_child = await cli_run(claude_env, cb, f"/api/v1/sessions/{child}/resume", {"prompt": "branch"})
        assert flag_value(rec_child["argv"], "--resume") == parent_sdk and "--fork-session" in rec_child["argv"]
        assert texts(first) == ["Echo: branch (earlier turns: 2)"]
        second, rec_child2 = await cli_run(claude_env, ca, f"/api/v1/sessions/{child}/resume", {"prompt": "more"})
        child_sdk = flag_value(rec_child2["argv"], "--resume")
        assert child_sdk not in (None, parent_sdk) and "--fork-session" not in rec_child2["argv"]
        assert texts(second) == ["Echo: more (earlier turns: 3)"]
        # The parent's conversation did not see the child's turns.
        back, rec_parent = await cli_run(claude_env, cb, f"/api/v1/sessions/{parent}/resume", {"prompt": "home"})
        assert flag_value(rec_parent["argv"], "--resume") == parent_sdk
        assert texts(back) == ["Echo: home (earlier turns: 2)"]
        # Deleting the parent keeps what the child needs; the child still resumes.
        assert (await ca.delete(f"/api/v1/sessions/{parent}")).status_code == 204
        last, _ = await cli_run(claude_env, cb, f"/api/v1/sessions/{child}/resume", {"prompt": "still"})
        assert texts(last) == ["Echo: still (earlier turns: 4)"]


async def test_interrupt_from_the_other_instance(
    claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        mark = claude_env.mark()
        resp, events = await start_stream(ca, "/api/v1/query", {"prompt": "sleep 30"})
        try:
            init = await next_event(events, "init")
            sid = init.data["session_id"]
            await next_event(events, "message")  # a tick: the CLI is mid-turn
            started = time.perf_counter()
            assert (await cb.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
            rest = []
            while True:
                ev = await next_event(events, timeout=10)
                rest.append(ev)
                if ev.event == "done":
                    break
            elapsed = time.perf_counter() - started
        finally:
            await resp.aclose()
        assert rest[-1].data == {"reason": "interrupted"}
        assert elapsed < 3, elapsed
        # What the CLI said after the interrupt is kept: its note and its own result.
        after = [e for e in rest if e.event != "message" or e.data["role"] != "assistant"]
        assert [e.event for e in after] == ["message", "result", "done"]
        assert after[0].data["content"] == [{"type": "text", "text": "[Request interrupted by user]"}]
        result = after[1].data
        assert result["stop_reason"] == "interrupted" and result["is_error"] is False
        assert result["terminal_reason"] == "interrupted" and result["total_cost_usd"] == 0.0125
        assert (await session_status(cb, sid))["status"] == "interrupted"
        await assert_no_orphans([r["pid"] for r in claude_env.since(mark)])


async def test_ask_user_question_answered_from_the_other_instance(
    claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        resp, events = await start_stream(ca, "/api/v1/query", {"prompt": "ask"})
        try:
            sid = (await next_event(events, "init")).data["session_id"]
            question = (await next_event(events, "question")).data
            assert question["kind"] == "ask_user_question" and question["question"] == "Which colour?"
            assert question["options"] == ["red", "blue"] and question["header"] == "Colour"
            assert question["multi_select"] is False and question["tool_use_id"].startswith("toolu_")
            wrong = await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "x", "question_id": "nope"})
            assert_problem(wrong, 409, "NO_PENDING_QUESTION")
            answered = await cb.post(
                f"/api/v1/sessions/{sid}/answer", json={"answer": "blue", "question_id": question["question_id"]}
            )
            assert answered.status_code == 200 and answered.json() == {"status": "delivered"}
            again = await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "red"})
            assert again.status_code == 409
            result = await next_event(events, "result")
            assert result.data["result"] == "Answer: blue"
            assert (await next_event(events, "done")).data == {"reason": "completed"}
        finally:
            await resp.aclose()
        messages = (await cb.get(f"/api/v1/sessions/{sid}/messages")).json()["items"]
        tool_result = next(
            b for m in messages if m["event"] == "message" for b in m["data"]["content"] if b["type"] == "tool_result"
        )
        assert tool_result["content"] == "answered blue"


async def test_tool_approval_in_default_mode(
    claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        for answer, expected in (
            ("allow", "Used tool Bash"),
            ("no, not now", "Denied: The user denied this tool use: no, not now"),
        ):
            resp, events = await start_stream(ca, "/api/v1/query", {"prompt": "tool Bash"})
            try:
                sid = (await next_event(events, "init")).data["session_id"]
                question = (await next_event(events, "question")).data
                assert question["kind"] == "permission" and question["tool_name"] == "Bash"
                assert question["options"] == ["allow", "deny"] and question["tool_input"] == {"command": "touch x"}
                assert question["question"] == "Allow Bash to run? touch a file"
                reply = await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": answer})
                assert reply.status_code == 200
                result = await next_event(events, "result")
                assert result.data["result"] == expected
                await next_event(events, "done")
            finally:
                await resp.aclose()
        # An allowed tool asks nobody.
        events = await run_to_done(ca, "/api/v1/query", {"prompt": "tool Bash", "allowed_tools": ["Bash"]})
        assert "question" not in names(events) and texts(events)[-1] == "Used tool Bash"


async def test_permission_mode_change_reaches_the_agent_from_the_other_instance(
    claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        resp, events = await start_stream(ca, "/api/v1/query", {"prompt": "wait-mode"})
        try:
            sid = (await next_event(events, "init")).data["session_id"]
            patched = await cb.patch(f"/api/v1/sessions/{sid}", json={"permission_mode": "acceptEdits"})
            assert patched.status_code == 200
            result = await next_event(events, "result")
            assert result.data["result"] == "mode: acceptEdits"
            assert (await next_event(events, "done")).data == {"reason": "completed"}
        finally:
            await resp.aclose()


async def test_api_error_surfaces_as_error_event(claude_a: Instance, claude_env: ClaudeEnv, api_key: str) -> None:
    async with claude_a.client(api_key) as ca:
        events, _ = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "fail"})
        assert names(events) == ["init", "message", "message", "result", "error", "done"]
        assert events[2].data["error"] == "server_error"
        assert events[3].data["is_error"] is True and events[3].data["api_error_status"] == 500
        assert events[4].data["code"] == "AGENT_ERROR" and "500" in events[4].data["message"]
        assert events[-1].data == {"reason": "error"}
        assert (await session_status(ca, events[0].data["session_id"]))["status"] == "error"
        single = (await ca.post("/api/v1/query/single", json={"prompt": "fail"})).json()
        assert single["is_error"] is True and single["error"]["code"] == "AGENT_ERROR"


async def test_cli_crash_is_an_error_and_leaves_no_process(
    claude_a: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca:
        events, _ = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "crash"})
        assert names(events)[-2:] == ["error", "done"] and events[-1].data == {"reason": "error"}
        assert events[-2].data["code"] == "AGENT_ERROR"


async def test_many_runs_leave_no_cli_processes(claude_a: Instance, claude_env: ClaudeEnv, api_key: str) -> None:
    mark = claude_env.mark()
    async with claude_a.client(api_key) as ca:
        results = await asyncio.gather(*(run_to_done(ca, "/api/v1/query", {"prompt": f"p{i}"}) for i in range(4)))
    assert all(r[-1].data == {"reason": "completed"} for r in results)
    pids = [r["pid"] for r in claude_env.since(mark)]
    assert len(pids) == 4
    await assert_no_orphans(pids)
    assert not child_pids() & set(pids)


async def test_interrupt_while_a_question_waits(
    claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    mark = claude_env.mark()
    async with claude_a.client(api_key) as ca, claude_b.client(api_key) as cb:
        resp, events = await start_stream(ca, "/api/v1/query", {"prompt": "ask"})
        try:
            sid = (await next_event(events, "init")).data["session_id"]
            await next_event(events, "question")
            assert (await cb.post(f"/api/v1/sessions/{sid}/interrupt")).status_code == 202
            result = await next_event(events, "result")
            done = await next_event(events, "done")
        finally:
            await resp.aclose()
        assert result.data["stop_reason"] == "interrupted" and done.data == {"reason": "interrupted"}
        assert_problem(await cb.post(f"/api/v1/sessions/{sid}/answer", json={"answer": "red"}), 409, "NOT_RUNNING")
    await assert_no_orphans([r["pid"] for r in claude_env.since(mark)])


async def test_deleting_a_session_removes_its_agent_transcript(
    claude_a: Instance, claude_env: ClaudeEnv, servers: TestServers, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca:
        events, _ = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "keep me"})
        sid = events[0].data["session_id"]
        _, record = await cli_run(claude_env, ca, f"/api/v1/sessions/{sid}/resume", {"prompt": "again"})
        sdk_session = flag_value(record["argv"], "--resume")
        assert await transcript_rows(servers, sdk_session) > 0
        assert (await ca.delete(f"/api/v1/sessions/{sid}")).status_code == 204
        assert await transcript_rows(servers, sdk_session) == 0


async def test_an_unrun_fork_keeps_its_parents_transcript_until_it_is_deleted(
    claude_a: Instance, claude_env: ClaudeEnv, servers: TestServers, api_key: str
) -> None:
    async with claude_a.client(api_key) as ca:
        events, _ = await cli_run(claude_env, ca, "/api/v1/query", {"prompt": "root"})
        parent = events[0].data["session_id"]
        _, record = await cli_run(claude_env, ca, f"/api/v1/sessions/{parent}/resume", {"prompt": "again"})
        parent_sdk = flag_value(record["argv"], "--resume")
        fork = (await ca.post(f"/api/v1/sessions/{parent}/fork", json={})).json()["id"]
        assert (await ca.delete(f"/api/v1/sessions/{parent}")).status_code == 204
        assert await transcript_rows(servers, parent_sdk) > 0  # the fork's first run will need it
        assert (await ca.delete(f"/api/v1/sessions/{fork}")).status_code == 204
        assert await transcript_rows(servers, parent_sdk) == 0  # nothing needs it any more
