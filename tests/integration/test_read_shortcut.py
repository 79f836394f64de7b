"""The read shortcut (app.domain.sessions.read_shortcut): a cache-hit `GET /api/v1/sessions/{id}` is answered in
front of Litestar's router, byte for byte as the router would have answered it; every other case goes through
the router, and a miss does not cost a second Valkey GET."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import REGISTRY
from valkey.asyncio import Valkey

from app.domain.sessions.read_shortcut import PATH_TEMPLATE
from app.domain.sessions.valkey_keys import session_key
from tests.helpers import assert_problem
from tests.instances import Instance, InstanceFactory

API = "/api/v1/sessions"
# Set per response by the server or per request: everything else must be identical.
VARYING = {"date", "server", "x-request-id"}


def shortcut_count(outcome: str) -> float:
    # In-process instances share this process's registry: tests compare deltas around one request at a time.
    return REGISTRY.get_sample_value("agentapi_session_read_shortcut_total", {"outcome": outcome}) or 0.0


def requests_count(status: int) -> float:
    labels = {"method": "GET", "path": PATH_TEMPLATE, "status_code": str(status), "app_name": "agent_api"}
    return REGISTRY.get_sample_value("agentapi_requests_total", labels) or 0.0


def stable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, [(k, v) for k, v in response.headers.items() if k not in VARYING], response.content


async def get_counted(client: httpx.AsyncClient, path: str, **kwargs: Any) -> tuple[httpx.Response, float, float]:
    """The response and how much the served / routed counters moved during it."""
    served, routed = shortcut_count("served"), shortcut_count("routed")
    response = await client.get(path, **kwargs)
    return response, shortcut_count("served") - served, shortcut_count("routed") - routed


async def test_a_cache_hit_is_answered_by_the_shortcut_exactly_as_by_the_router(
    instance_factory: InstanceFactory, api_key: str
) -> None:
    fast: Instance = await instance_factory("fast")
    routed: Instance = await instance_factory("routed", app__read_shortcut=False)
    async with fast.client(api_key) as cf, routed.client(api_key) as cr:
        created = await cf.post(API, json={"title": "shortcut", "tags": ["a", "b"], "metadata": {"k": [1, 2]}})
        sid = created.json()["id"]
        before = requests_count(200)
        via_shortcut, served, _ = await get_counted(cf, f"{API}/{sid}")
        assert served == 1
        # The request metrics label it with the route's template, as they do a routed request.
        assert requests_count(200) == before + 1
        via_router, served, routed_count = await get_counted(cr, f"{API}/{sid}")
        assert (served, routed_count) == (0, 0)  # not installed there
        assert stable(via_shortcut) == stable(via_router)
        assert via_shortcut.json()["title"] == "shortcut"
        assert via_shortcut.headers["etag"] == '"1"'
        assert via_shortcut.headers["x-request-id"]
        # HEAD goes the same way: the same headers, no body.
        head_fast, head_routed = await cf.head(f"{API}/{sid}"), await cr.head(f"{API}/{sid}")
        assert stable(head_fast) == stable(head_routed)
        assert head_fast.content == b""
        assert head_fast.headers["content-length"] == str(len(via_router.content))
        # An upper-case id is the same session (the router parses it as a UUID too).
        upper, served, _ = await get_counted(cf, f"{API}/{sid.upper()}")
        assert served == 1
        assert stable(upper) == stable(via_router)


async def test_what_the_shortcut_does_not_answer_goes_through_the_router(
    a: Instance, api_key: str, other_api_key: str, valkey: Valkey
) -> None:
    async with a.client(api_key) as client, a.client(other_api_key) as other:
        sid = (await client.post(API, json={"title": "mine"})).json()["id"]
        assert (await other.get(f"{API}/{sid}")).status_code == 404  # the other key is now verified too

        # Another key's session: the router's 404.
        response, served, routed = await get_counted(other, f"{API}/{sid}")
        assert_problem(response, 404, "SESSION_NOT_FOUND")
        assert (served, routed) == (0, 1)

        # A miss: the router loads it from Postgres, and the cache is read once (by the shortcut), not twice. (Valkey
        # counts two GETs: that one and the one inside the set-if-newer script re-caching the session.)
        await valkey.delete(session_key(sid))
        gets = (await valkey.info("commandstats"))["cmdstat_get"]["calls"]
        response, served, routed = await get_counted(client, f"{API}/{sid}")
        assert response.status_code == 200
        assert response.json()["id"] == sid
        assert (served, routed) == (0, 1)
        assert (await valkey.info("commandstats"))["cmdstat_get"]["calls"] - gets == 2
        # Re-cached by that read: the next one is a hit again.
        _, served, _ = await get_counted(client, f"{API}/{sid}")
        assert served == 1

        # No key, or an unknown one: the router's 401.
        response, served, routed = await get_counted(httpx.AsyncClient(base_url=a.base_url), f"{API}/{sid}")
        assert_problem(response, 401, "UNAUTHORIZED")
        assert (served, routed) == (0, 1)
        response, served, routed = await get_counted(client, f"{API}/{sid}", headers={"X-API-Key": "aak_unknown"})
        assert_problem(response, 401, "UNAUTHORIZED")
        assert (served, routed) == (0, 1)

        # A deleted session: a tombstone in the cache, the router's 404.
        assert (await client.delete(f"{API}/{sid}")).status_code == 204
        response, served, routed = await get_counted(client, f"{API}/{sid}")
        assert_problem(response, 404, "SESSION_NOT_FOUND")
        assert (served, routed) == (0, 1)

        # Not the exact path: untouched by the shortcut.
        for path in (f"{API}/{sid}/", f"{API}/not-a-uuid", f"{API}/{sid}/messages"):
            _, served, routed = await get_counted(client, path)
            assert (served, routed) == (0, 0), path


async def test_a_key_not_verified_recently_goes_through_the_router(
    instance_factory: InstanceFactory, api_key: str
) -> None:
    # AUTH_CACHE_TTL=0: no key is ever fresh, so every read is authenticated by the router's middleware.
    inst: Instance = await instance_factory("stale", app__auth_cache_ttl=0.0)
    async with inst.client(api_key) as client:
        sid = (await client.post(API, json={})).json()["id"]
        response, served, routed = await get_counted(client, f"{API}/{sid}")
        assert response.status_code == 200
        assert (served, routed) == (0, 1)


async def test_not_installed_when_a_rate_limit_applies(instance_factory: InstanceFactory, api_key: str) -> None:
    inst: Instance = await instance_factory("limited", app__rate_limit_per_minute=1000)
    async with inst.client(api_key) as client:
        sid = (await client.post(API, json={})).json()["id"]
        response, served, routed = await get_counted(client, f"{API}/{sid}")
        assert response.status_code == 200
        assert (served, routed) == (0, 0)
        assert response.headers["x-ratelimit-limit"] == "1000"
