"""`agent-api keys create|list|revoke` as real subprocesses against the test database (SPEC §1, §6)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from app.asgi import build_alchemy_config
from app.domain.keys.hashing import hash_key
from tests.helpers import assert_problem, wait_for
from tests.instances import Instance, InstanceFactory, make_settings
from tests.servers import TestServers

ROOT = Path(__file__).resolve().parents[2]
API = "/api/v1/sessions"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


async def agent_api(servers: TestServers, *args: str) -> Result:
    env = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "VALKEY_URL", "LITESTAR_APP"}}
    env["DATABASE_URL"] = servers.database_url
    env["DATABASE_MIGRATE_ON_STARTUP"] = "false"
    proc = await asyncio.create_subprocess_exec(
        "uv",
        "run",
        "--no-sync",
        "agent-api",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def key_rows_as_text(servers: TestServers) -> list[str]:
    config = build_alchemy_config(make_settings(servers, "cli-check"))
    try:
        async with config.get_engine().connect() as conn:
            rows = (await conn.execute(text("SELECT CAST(api_key.* AS text) FROM api_key"))).scalars().all()
            return [str(r) for r in rows]
    finally:
        await config.get_engine().dispose()


async def test_keys_create_list_revoke(servers: TestServers, instance_factory: InstanceFactory) -> None:
    name = f"cli-{secrets.token_hex(4)}"
    created = await agent_api(servers, "keys", "create", "--name", name)
    assert created.code == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    key = lines[-1].strip()
    assert key.startswith("aak_")
    assert len(key) >= 40
    assert " " not in key

    # Only the hash is stored: the plaintext is in no column of any row.
    rows = await key_rows_as_text(servers)
    assert any(hash_key(key) in r for r in rows)
    assert not any(key in r for r in rows)
    assert not any(key[4:12] in r for r in rows)  # nor any stretch of its secret part

    inst: Instance = await instance_factory("cli", app__auth_cache_ttl=0.2)
    async with inst.client(key) as c:
        made = await c.post(API, json={"title": "via cli key"})
        assert made.status_code == 201, made.text
        async with httpx.AsyncClient(base_url=inst.base_url, headers={"Authorization": f"Bearer {key}"}) as bearer:
            assert (await bearer.get(API)).json()["total"] == 1

        # Independent commands run side by side (each one is a Python start-up).
        listed, duplicate = await asyncio.gather(
            agent_api(servers, "keys", "list"), agent_api(servers, "keys", "create", "--name", name)
        )
        assert listed.code == 0, listed.stderr
        assert key not in listed.stdout
        assert key not in listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.split() and line.split()[0] == name)
        assert hash_key(key)[:12] in row  # the fingerprint (of the hash) identifies it
        assert key[4:12] not in row  # and no part of the key's secret is shown
        assert row.split()[-1] == "-"  # not revoked

        assert duplicate.code != 0
        assert "already exists" in duplicate.stderr + duplicate.stdout

        revoked = await agent_api(servers, "keys", "revoke", name)
        assert revoked.code == 0, revoked.stderr
        assert key not in revoked.stdout

        async def refused() -> bool:
            return (await c.get(API)).status_code == 401

        await wait_for(refused, timeout=5, what="revoked CLI key refused")
        assert_problem(await c.post(API, json={}), 401, "UNAUTHORIZED")

        listed = await agent_api(servers, "keys", "list")
        row = next(line for line in listed.stdout.splitlines() if line.split() and line.split()[0] == name)
        assert row.split()[-1] != "-"  # the revocation time
    assert not any(key in r for r in await key_rows_as_text(servers))


def test_run_makes_a_dev_key_only_with_its_own_embedded_postgres(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`agent-api run` against a shared database (e.g. compose replicas) must not invent keys; with the
    embedded PostgreSQL it started itself, it makes and prints a development key."""
    from app.cli import dev_servers
    from app.config.settings import get_settings

    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.setenv("VALKEY_URL", "redis://127.0.0.1:1/0")  # set: no embedded Valkey is started
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.invalid/agent")
    get_settings.cache_clear()
    dev_servers.prepare_environment("run")
    assert "API_KEY" not in os.environ
    assert "keys create" in capsys.readouterr().err

    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setattr(dev_servers, "embedded_postgres_url", lambda path: ("postgresql://127.0.0.1:1/agent", None))
    get_settings.cache_clear()
    try:
        dev_servers.prepare_environment("run")
        key = os.environ["API_KEY"]
        assert key.startswith("aak_")
        assert key in capsys.readouterr().err
    finally:
        monkeypatch.delenv("API_KEY", raising=False)
        get_settings.cache_clear()


async def test_keys_create_on_a_brand_new_database(servers: TestServers) -> None:
    """`keys create` before the server ever ran: it applies the migrations first, as the server would."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(servers.database_url)
    fresh = f"fresh_{secrets.token_hex(4)}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{fresh}"')
        env_url = url.set(database=fresh).render_as_string(hide_password=False)
        env = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "VALKEY_URL", "LITESTAR_APP"}}
        env |= {"DATABASE_URL": env_url, "DATABASE_MIGRATE_ON_STARTUP": "true"}
        proc = await asyncio.create_subprocess_exec(
            "uv", "run", "--no-sync", "agent-api", "keys", "create", "--name", "first",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        key = out.decode().strip().splitlines()[-1]
        assert key.startswith("aak_")
        conn = await asyncpg.connect(url.set(drivername="postgresql", database=fresh).render_as_string(False))
        try:
            assert await conn.fetchval("SELECT key_hash FROM api_key WHERE name = 'first'") == hash_key(key)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
        await admin.close()


async def key_names(servers: TestServers) -> set[str]:
    config = build_alchemy_config(make_settings(servers, "cli-check"))
    try:
        async with config.get_engine().connect() as conn:
            return set((await conn.execute(text("SELECT name FROM api_key"))).scalars().all())
    finally:
        await config.get_engine().dispose()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("", "empty"), ("   ", "empty"), ("x" * 101, "100"), ("bad\nname", "control")],
    ids=["empty", "blank", "too-long", "control-char"],
)
async def test_keys_create_refuses_bad_names_clearly(servers: TestServers, name: str, reason: str) -> None:
    """Issue 18 item 12: a clear message and a non-zero exit, no traceback, no row."""
    before = await key_names(servers)
    result = await agent_api(servers, "keys", "create", "--name", name)
    assert result.code != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "asyncpg" not in output, output
    assert "--name" in output and reason in output, output
    assert "aak_" not in output
    assert await key_names(servers) == before


async def test_help_and_groups_start_no_embedded_servers_and_create_no_data_dir(tmp_path: Path) -> None:
    """`agent-api --help`, `run --help`, `keys` ... print help: no PostgreSQL or Valkey is started and no
    `.data/` appears (it used to: every `run`, `keys` or `database` command line started them first)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"API_KEY", "VALKEY_URL", "DATABASE_URL", "LITESTAR_APP", "AGENT_API_DATA_DIR"}
    }
    executable = Path(sys.executable).parent / "agent-api"
    cases = [["--help"], ["run", "--help"], ["keys"], ["keys", "create", "--help"], ["database", "--help"]]

    async def one(args: list[str]) -> tuple[list[str], int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            str(executable),
            *args,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return args, proc.returncode or 0, out.decode(), err.decode()

    for args, code, out, err in await asyncio.gather(*(one(case) for case in cases)):
        # A group without its subcommand prints its usage and exits 2 (click), the rest 0.
        assert code == (2 if args == ["keys"] else 0), (args, err[-2000:])
        assert "Usage" in out + err, (args, out[-2000:])
        assert "agent-api: started" not in err, (args, err[-2000:])
    assert list(tmp_path.iterdir()) == [], "a help command created files"
