"""Two app instances running the claude backend, plus helpers to watch the CLI processes they start.

Each instance has its own CLAUDE_CONFIG_DIR (the CLI's local transcripts), so a resume on the other instance
can only come from the Postgres store; both share one working directory (CLAUDE_CWD), as the README asks."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.instances import Instance, make_settings, start_instance
from tests.servers import TestServers

FAKE_CLI = Path(__file__).with_name("fake_cli.py")


def child_pids() -> set[int]:
    """Live processes whose parent is this test process (zombies count: nobody reaped them)."""
    me = os.getpid()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def assert_no_orphans(pids: list[int], timeout: float = 10.0) -> None:
    async def gone() -> bool:
        return not any(alive(p) for p in pids)

    await wait_for(gone, timeout=timeout, what=f"CLI processes {pids} to exit")


@dataclass
class ClaudeEnv:
    root: Path
    record_dir: Path
    cwd: Path
    config_dirs: dict[str, Path]

    def mark(self) -> set[str]:
        return {p.name for p in self.record_dir.glob("*.json")}

    def since(self, mark: set[str]) -> list[dict[str, Any]]:
        paths = sorted(
            (p for p in self.record_dir.glob("*.json") if p.name not in mark), key=lambda p: p.stat().st_mtime_ns
        )
        return [json.loads(p.read_text()) for p in paths]


@pytest.fixture(scope="module")
def claude_env() -> Iterator[ClaudeEnv]:
    root = Path(tempfile.mkdtemp(prefix="agentapi-claude-"))
    record = root / "records"
    record.mkdir()
    cwd = root / "work"
    cwd.mkdir()
    wrapper = root / "claude"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CLI}" "$@"\n')
    wrapper.chmod(0o755)
    previous = os.environ.get("FAKE_CLI_RECORD_DIR")
    os.environ["FAKE_CLI_RECORD_DIR"] = str(record)
    env = ClaudeEnv(root=root, record_dir=record, cwd=cwd, config_dirs={"a": root / "cfg-a", "b": root / "cfg-b"})
    yield env
    if previous is None:
        os.environ.pop("FAKE_CLI_RECORD_DIR", None)
    else:
        os.environ["FAKE_CLI_RECORD_DIR"] = previous
    shutil.rmtree(root, ignore_errors=True)


def claude_overrides(env: ClaudeEnv, name: str, cli_path: str | None) -> dict[str, Any]:
    return {
        "app__agent_backend": "claude",
        "app__anthropic_api_key": "dummy",
        "claude__cli_path": cli_path if cli_path is not None else str(env.root / "claude"),
        "claude__cwd": str(env.cwd),
        "claude__config_dir": str(env.config_dirs[name]),
        "runs__shutdown_grace": 1.0,
    }


@pytest.fixture(scope="module")
async def claude_a(servers: TestServers, claude_env: ClaudeEnv) -> AsyncIterator[Instance]:
    inst = await start_instance(
        "claude-a",
        make_settings(servers, f"test-claude-a-{secrets.token_hex(3)}", **claude_overrides(claude_env, "a", None)),
    )
    yield inst
    await inst.stop()


@pytest.fixture(scope="module")
async def claude_b(servers: TestServers, claude_env: ClaudeEnv) -> AsyncIterator[Instance]:
    inst = await start_instance(
        "claude-b",
        make_settings(servers, f"test-claude-b-{secrets.token_hex(3)}", **claude_overrides(claude_env, "b", None)),
    )
    yield inst
    await inst.stop()
