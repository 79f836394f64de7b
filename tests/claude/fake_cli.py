"""A scripted stand-in for the Claude Code CLI, passed to the SDK as `cli_path` (stdlib only).

It speaks the CLI's stream-json line protocol: answers `initialize`, `interrupt` and `set_permission_mode`
control requests, asks `can_use_tool` of the SDK, writes its transcript under CLAUDE_CONFIG_DIR and
mirrors it (`transcript_mirror`, with --session-mirror) like the real CLI, and exits when stdin closes.
It records its pid and argv in $FAKE_CLI_RECORD_DIR (for the option-mapping and orphan checks).

Prompts: `sleep <s>` ticks every 100 ms (interruptible); `ask` uses AskUserQuestion; `tool <name>` uses a
tool (asking permission in `default` mode unless allowed); `think` thinks; `fail` ends with an API error;
`json` gives structured output (with --json-schema); `wait-mode` waits for a permission-mode change;
`extras` reports system, task and rate-limit messages; `crash` exits mid-turn; anything else echoes with
the number of earlier user turns in the (resumed) transcript.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ARGS = sys.argv[1:]
OUT_LOCK = threading.Lock()
INTERRUPTED = threading.Event()
RESPONSES: dict[str, dict[str, Any]] = {}
RESPONSE_READY = threading.Condition()
STATE: dict[str, Any] = {}
TURNS: list[Any] = []
TURN_READY = threading.Condition()


def arg(name: str) -> str | None:
    for i, a in enumerate(ARGS):
        if a == name and i + 1 < len(ARGS):
            return ARGS[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def flag(name: str) -> bool:
    return name in ARGS


def send(obj: dict[str, Any]) -> None:
    with OUT_LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def record() -> None:
    directory = os.environ.get("FAKE_CLI_RECORD_DIR")
    if directory:
        Path(directory, f"{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(), "argv": ARGS}))


# -- transcript ----------------------------------------------------------------------------------------


def project_dir() -> Path:
    config = os.environ.get("CLAUDE_CONFIG_DIR") or str(Path.home() / ".claude")
    key = re.sub(r"[^a-zA-Z0-9]", "-", os.path.realpath(os.getcwd()))
    return Path(config) / "projects" / key


def transcript(session_id: str) -> Path:
    return project_dir() / f"{session_id}.jsonl"


def write_entries(entries: list[dict[str, Any]]) -> None:
    path = transcript(STATE["session_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")
    if flag("--session-mirror"):
        send({"type": "transcript_mirror", "filePath": str(path), "entries": entries})


def load_history(session_id: str) -> list[dict[str, Any]]:
    path = transcript(session_id)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- control -------------------------------------------------------------------------------------------


def reader() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        kind = msg.get("type")
        if kind == "control_request":
            req = msg["request"]
            sub = req.get("subtype")
            if sub == "interrupt":
                INTERRUPTED.set()
            elif sub == "set_permission_mode":
                STATE["mode"] = req["mode"]
            send(
                {
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": msg["request_id"], "response": {}},
                }
            )
        elif kind == "control_response":
            with RESPONSE_READY:
                RESPONSES[msg["response"]["request_id"]] = msg["response"]
                RESPONSE_READY.notify_all()
        elif kind == "user":
            with TURN_READY:
                TURNS.append(msg)
                TURN_READY.notify_all()
    with TURN_READY:
        TURNS.append(None)
        TURN_READY.notify_all()


def ask_sdk(request: dict[str, Any]) -> dict[str, Any] | None:
    """A control request to the SDK; None when interrupted first."""
    request_id = f"req_{uuid.uuid4().hex[:12]}"
    send({"type": "control_request", "request_id": request_id, "request": request})
    with RESPONSE_READY:
        while request_id not in RESPONSES:
            if INTERRUPTED.is_set():
                return None
            RESPONSE_READY.wait(0.05)
        response = RESPONSES.pop(request_id)
    return response.get("response") or {}


# -- messages ------------------------------------------------------------------------------------------


def model() -> str:
    return arg("--model") or "claude-fake-1"


def assistant(content: list[dict[str, Any]], **extra: Any) -> None:
    if flag("--include-partial-messages"):
        for block in content:
            if block["type"] == "text":
                send(
                    {
                        "type": "stream_event",
                        "uuid": str(uuid.uuid4()),
                        "session_id": STATE["session_id"],
                        "parent_tool_use_id": None,
                        "event": {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": block["text"]},
                        },
                    }
                )
    entry = {
        "type": "assistant",
        "uuid": str(uuid.uuid4()),
        "sessionId": STATE["session_id"],
        "message": {
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "role": "assistant",
            "model": model(),
            "content": content,
            "stop_reason": extra.pop("stop_reason", "end_turn"),
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
    }
    send({**entry, "session_id": STATE["session_id"], "parent_tool_use_id": None, **extra})
    write_entries([entry])


def user(content: Any, *, echo: bool = True, **extra: Any) -> None:
    entry = {
        "type": "user",
        "uuid": str(uuid.uuid4()),
        "sessionId": STATE["session_id"],
        "message": {"role": "user", "content": content},
    }
    if echo:
        send({**entry, "session_id": STATE["session_id"], "parent_tool_use_id": None, **extra})
    write_entries([entry])


def result(text: str | None, *, is_error: bool = False, **extra: Any) -> None:
    send(
        {
            "type": "result",
            "subtype": "success",
            "duration_ms": 12,
            "duration_api_ms": 5,
            "is_error": is_error,
            "num_turns": 1,
            "session_id": STATE["session_id"],
            "total_cost_usd": 0.0125,
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3},
            "result": text,
            "stop_reason": "end_turn",
            "modelUsage": {model(): {"inputTokens": 10, "outputTokens": 5, "costUSD": 0.0125}},
            "permission_denials": [],
            "uuid": str(uuid.uuid4()),
            **extra,
        }
    )


def interrupted_end() -> None:
    user([{"type": "text", "text": "[Request interrupted by user]"}])
    result(None, terminal_reason="interrupted")


def tool_use(name: str, tool_input: dict[str, Any]) -> str:
    tool_id = f"toolu_{uuid.uuid4().hex[:20]}"
    assistant([{"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}], stop_reason="tool_use")
    return tool_id


# -- turns ---------------------------------------------------------------------------------------------


def turn(prompt: str, history: list[dict[str, Any]]) -> None:
    INTERRUPTED.clear()
    send(
        {
            "type": "system",
            "subtype": "init",
            "session_id": STATE["session_id"],
            "uuid": str(uuid.uuid4()),
            "cwd": os.getcwd(),
            "model": model(),
            "permissionMode": STATE["mode"],
            "tools": ["AskUserQuestion", "Bash", "Read", "Write"],
            "mcp_servers": [],
            "claude_code_version": "0.0.0-fake",
            "output_style": "default",
        }
    )
    user(prompt, echo=False)  # the real CLI does not echo the prompt either
    command, _, rest = prompt.partition(" ")
    if command == "sleep":
        ticks = round(float(rest or "1") * 10)
        for n in range(1, ticks + 1):
            if INTERRUPTED.wait(0.1):
                return interrupted_end()
            assistant([{"type": "text", "text": f"tick {n}"}])
        return result(f"slept {rest}s")
    if command == "ask":
        tool_id = tool_use("AskUserQuestion", {"questions": [QUESTION]})
        response = ask_sdk(
            {"subtype": "can_use_tool", "tool_name": "AskUserQuestion", "input": {"questions": [QUESTION]},
             "tool_use_id": tool_id, "permission_suggestions": None, "blocked_path": None}
        )  # fmt: skip
        if response is None or response.get("behavior") != "allow":
            return interrupted_end()
        answer = response["updatedInput"]["answers"][QUESTION["question"]]
        user([{"type": "tool_result", "tool_use_id": tool_id, "content": f"answered {answer}"}])
        assistant([{"type": "text", "text": f"Answer: {answer}"}])
        return result(f"Answer: {answer}")
    if command == "tool":
        name = rest or "Bash"
        tool_id = tool_use(name, {"command": "touch x"})
        allowed = (arg("--allowedTools") or "").split(",")
        if STATE["mode"] == "default" and name not in allowed:
            response = ask_sdk(
                {"subtype": "can_use_tool", "tool_name": name, "input": {"command": "touch x"},
                 "tool_use_id": tool_id, "permission_suggestions": None, "blocked_path": None,
                 "description": "touch a file"}
            )  # fmt: skip
            if response is None:
                return interrupted_end()
            if response.get("behavior") != "allow":
                user(
                    [{"type": "tool_result", "tool_use_id": tool_id, "content": response["message"], "is_error": True}]
                )
                assistant([{"type": "text", "text": f"Denied: {response['message']}"}])
                return result(f"Denied: {response['message']}")
        user([{"type": "tool_result", "tool_use_id": tool_id, "content": f"{name} ran", "is_error": False}])
        assistant([{"type": "text", "text": f"Used tool {name}"}])
        return result(f"Used tool {name}")
    if command == "think":
        assistant([{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "thought"}])
        return result("thought")
    if command == "fail":
        assistant([{"type": "text", "text": "API Error: 500 injected"}], error="server_error")
        return result("API Error: 500 injected", is_error=True, api_error_status=500, terminal_reason="api_error")
    if command == "json" and arg("--json-schema"):
        tool_id = tool_use("StructuredOutput", {"answer": "json", "n": 42})
        user([{"type": "tool_result", "tool_use_id": tool_id, "content": "Structured output provided successfully"}])
        return result(None, structured_output={"answer": "json", "n": 42})
    if command == "wait-mode":
        start = STATE["mode"]
        while STATE["mode"] == start:
            if INTERRUPTED.wait(0.02):
                return interrupted_end()
        assistant([{"type": "text", "text": f"mode: {STATE['mode']}"}])
        return result(f"mode: {STATE['mode']}")
    if command == "extras":
        sid = STATE["session_id"]
        send({"type": "system", "subtype": "status", "status": "requesting", "session_id": sid, "uuid": "st-1"})
        send({"type": "system", "subtype": "task_started", "task_id": "t1", "description": "sub", "uuid": "ts-1",
              "session_id": sid})  # fmt: skip
        send({"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "utilization": 0.9},
              "uuid": "rl-1", "session_id": sid})  # fmt: skip
        assistant([{"type": "text", "text": "extras"}])
        return result("extras")
    if command == "crash":
        os._exit(3)
    earlier = sum(1 for e in history if e.get("type") == "user" and isinstance(e["message"]["content"], str))
    text = f"Echo: {prompt} (earlier turns: {earlier})"
    assistant([{"type": "text", "text": text}])
    return result(text)


QUESTION = {
    "question": "Which colour?",
    "header": "Colour",
    "options": [{"label": "red", "description": "warm"}, {"label": "blue", "description": "cool"}],
    "multiSelect": False,
}


def main() -> None:
    record()
    resume = arg("--resume")
    STATE["mode"] = arg("--permission-mode") or "default"
    history = load_history(resume) if resume else []
    STATE["session_id"] = resume if resume and not flag("--fork-session") else str(uuid.uuid4())
    if resume and flag("--fork-session") and history:
        write_entries([{**e, "sessionId": STATE["session_id"]} for e in history])
    threading.Thread(target=reader, daemon=True).start()
    while True:
        with TURN_READY:
            while not TURNS:
                TURN_READY.wait()
            msg = TURNS.pop(0)
        if msg is None:
            return
        content = msg["message"]["content"]
        prompt = content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)
        turn(prompt.strip(), history)
        history = load_history(STATE["session_id"])
        time.sleep(0)


if __name__ == "__main__":
    main()
