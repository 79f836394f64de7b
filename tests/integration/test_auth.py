"""API-key authentication and per-key isolation (SPEC §3, §6)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from valkey.asyncio import Valkey

from app.asgi import build_alchemy_config
from app.domain.keys.hashing import hash_key
from app.domain.keys.services import ApiKeyService
from app.domain.sessions.valkey_keys import session_key
from tests.helpers import assert_problem, wait_for
from tests.instances import Instance, InstanceFactory, create_api_key, make_settings
from tests.servers import TestServers

API = "/api/v1/sessions"


async def revoke(servers: TestServers, name: str) -> None:
    config = build_alchemy_config(make_settings(servers, "revoker"))
    try:
        async with config.get_session() as db:
            assert await ApiKeyService(session=db).revoke(name)
    finally:
        await config.get_engine().dispose()


async def fetch_all(servers: TestServers, sql: str, **params: Any) -> list[Any]:
    config = build_alchemy_config(make_settings(servers, "reader"))
    try:
        async with config.get_engine().connect() as conn:
            return list((await conn.execute(text(sql), params)).all())
    finally:
        await config.get_engine().dispose()


def assert_unauthorized(resp: httpx.Response) -> None:
    assert_problem(resp, 401, "UNAUTHORIZED")
    assert "www-authenticate" in resp.headers


async def test_missing_or_wrong_key_is_401_problem(a: Instance, api_key: str) -> None:
    async with a.client() as anon:
        assert_unauthorized(await anon.get(API))
        assert_unauthorized(await anon.post(API, json={}))
        assert_unauthorized(await anon.get(API, headers={"X-API-Key": ""}))
        assert_unauthorized(await anon.get(API, headers={"X-API-Key": "aak_" + secrets.token_urlsafe(32)}))
        assert_unauthorized(await anon.get(API, headers={"X-API-Key": api_key + "x"}))
        assert_unauthorized(await anon.get(API, headers={"Authorization": "Bearer"}))
        assert_unauthorized(await anon.get(API, headers={"Authorization": f"Basic {api_key}"}))
        assert_unauthorized(await anon.get(API, headers={"Authorization": api_key}))
        assert_unauthorized(await anon.get(f"{API}/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"))
        # Nothing was created by the refused POST.
        async with a.client(api_key) as c:
            assert (await c.get(API)).json()["total"] == 0


async def test_x_api_key_and_bearer_both_work(a: Instance, api_key: str) -> None:
    async with a.client() as anon:
        created = await anon.post(API, json={"title": "x"}, headers={"X-API-Key": api_key})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        for headers in (
            {"Authorization": f"Bearer {api_key}"},
            {"Authorization": f"bearer {api_key}"},
            {"Authorization": f"Bearer   {api_key}"},
            {"X-API-Key": "", "Authorization": f"Bearer {api_key}"},
        ):
            got = await anon.get(f"{API}/{sid}", headers=headers)
            assert got.status_code == 200, (headers, got.text)
            assert got.json()["id"] == sid


async def test_public_endpoints_need_no_key(a: Instance) -> None:
    async with a.client() as anon:
        live = await anon.get("/health/live")
        assert live.status_code == 200
        assert live.json() == {"status": "ok"}
        ready = await anon.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ok"
        assert (await anon.get("/docs/openapi.json")).status_code == 200


async def test_openapi_marks_only_health_endpoints_public(a: Instance) -> None:
    """Found by the fuzzer (ignored_auth): /health/* inherited the app-wide key requirement in the document."""
    async with a.client() as anon:
        doc = (await anon.get("/docs/openapi.json")).json()
    assert doc["security"] == [{"ApiKey": []}, {"Bearer": []}]
    for path in ("/health/live", "/health/ready"):
        assert doc["paths"][path]["get"]["security"] == [{}], path
    assert "503" in doc["paths"]["/health/ready"]["get"]["responses"]
    for path, ops in doc["paths"].items():
        if not path.startswith("/health/"):
            assert all("security" not in op for op in ops.values()), path


async def test_other_key_gets_404_and_never_the_data(
    a: Instance, b: Instance, api_key: str, other_api_key: str, valkey: Valkey
) -> None:
    secret_title = "secret-" + secrets.token_hex(8)
    async with a.client(api_key) as owner, a.client(other_api_key) as other_a, b.client(other_api_key) as other_b:
        created = await owner.post(API, json={"title": secret_title, "metadata": {"secret": secret_title}})
        assert created.status_code == 201
        sid = created.json()["id"]

        async def probe_all(client: httpx.AsyncClient) -> None:
            responses = [
                await client.get(f"{API}/{sid}"),
                await client.patch(f"{API}/{sid}", json={"title": "hijacked"}),
                await client.patch(f"{API}/{sid}", json={"title": "hijacked"}, headers={"If-Match": '"1"'}),
                await client.patch(f"{API}/{sid}", json={"title": "hijacked"}, headers={"If-Match": '"7"'}),
                await client.delete(f"{API}/{sid}"),
                await client.post(f"{API}/{sid}/fork", json={"title": "stolen"}),
                await client.get(f"{API}/{sid}/messages"),
            ]
            for resp in responses:
                body = assert_problem(resp, 404, "SESSION_NOT_FOUND")
                assert secret_title not in resp.text
                assert "etag" not in resp.headers
                assert set(body) <= {"type", "title", "status", "code", "detail", "instance"}
            page = (await client.get(API)).json()
            assert page["total"] == 0
            assert secret_title not in str(page)

        # Cached (just created), then from Postgres after the cache entry is gone, on both instances.
        await probe_all(other_a)
        await probe_all(other_b)
        await valkey.delete(session_key(sid))
        await probe_all(other_b)
        await probe_all(other_a)

        # The owner's session is untouched and the other key got nothing.
        got = await owner.get(f"{API}/{sid}")
        assert got.status_code == 200
        assert got.json()["title"] == secret_title
        assert got.json()["version"] == 1
        assert (await owner.get(API)).json()["total"] == 1


async def test_revoked_key_is_refused_on_every_instance(
    servers: TestServers, instance_factory: InstanceFactory
) -> None:
    name = f"revoke-me-{secrets.token_hex(4)}"
    key = await create_api_key(servers, name)
    one: Instance = await instance_factory("r1", app__auth_cache_ttl=0.3)
    two: Instance = await instance_factory("r2", app__auth_cache_ttl=0.3)
    async with one.client(key) as c1, two.client(key) as c2:
        assert (await c1.post(API, json={})).status_code == 201
        assert (await c2.get(API)).json()["total"] == 1
        await revoke(servers, name)

        async def refused(client: httpx.AsyncClient) -> bool:
            return (await client.get(API)).status_code == 401

        await wait_for(lambda: refused(c1), timeout=5, what="revoked key refused by r1")
        await wait_for(lambda: refused(c2), timeout=5, what="revoked key refused by r2")
        for client in (c1, c2):
            assert_unauthorized(await client.get(API))
            assert_unauthorized(await client.post(API, json={}))


async def test_bootstrap_api_key_setting_authenticates(
    servers: TestServers, instance_factory: InstanceFactory, valkey: Valkey
) -> None:
    # Short on purpose: a stored 12-character "prefix" would be all of it.
    key = "bt-" + secrets.token_urlsafe(6)
    inst: Instance = await instance_factory("boot", app__api_key=key)
    async with inst.client(key) as c, inst.client() as anon:
        created = await c.post(API, json={"title": "bootstrapped"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        bearer = await anon.get(f"{API}/{sid}", headers={"Authorization": f"Bearer {key}"})
        assert bearer.status_code == 200
        assert_unauthorized(await anon.get(API, headers={"X-API-Key": key[:-1]}))

    rows = await fetch_all(servers, "SELECT key_hash, fingerprint FROM api_key WHERE name = 'bootstrap'")
    assert len(rows) == 1
    assert rows[0][0] == hash_key(key) and rows[0][1] == hash_key(key)[:12]
    # Only the hash is stored: the plaintext appears in no column of any key row.
    assert not await fetch_all(servers, "SELECT id FROM api_key WHERE key_hash = :k OR name = :k", k=key)
    assert not await fetch_all(
        servers, "SELECT id FROM api_key WHERE position(:k in CAST(api_key.* AS text)) > 0", k=key
    )
    # ... nor in Valkey.
    async for name in valkey.scan_iter(match="*"):
        assert key.encode() not in name
        if await valkey.type(name) == b"string":
            value = await valkey.get(name)
            assert value is None or key.encode() not in value

    # A second instance started with a different bootstrap key replaces the first.
    new_key = "boot-" + secrets.token_urlsafe(24)
    await instance_factory("boot2", app__api_key=new_key)
    rows = await fetch_all(servers, "SELECT key_hash FROM api_key WHERE name = 'bootstrap'")
    assert [r[0] for r in rows] == [hash_key(new_key)]


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization"])
async def test_key_is_not_echoed_in_errors(a: Instance, header: str) -> None:
    bogus = "aak_" + secrets.token_urlsafe(32)
    value = bogus if header == "X-API-Key" else f"Bearer {bogus}"
    async with a.client() as anon:
        resp = await anon.get(API, headers={header: value})
        assert_unauthorized(resp)
        assert bogus not in resp.text
