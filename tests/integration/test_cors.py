"""CORS (CORS_ALLOW_ORIGINS) over real HTTP: off by default, preflights answered before authentication, the
headers browsers may send and read; a refused preflight is problem+json. (In a real browser:
tests/browser/test_cors.py.)"""

from __future__ import annotations

import pytest

from app.asgi import create_app
from tests.helpers import assert_problem
from tests.instances import Instance, InstanceFactory, make_settings
from tests.servers import TestServers

API = "/api/v1/sessions"
APP = "https://app.example.com"
REQUESTED = "authorization, content-type, idempotency-key, if-match, last-event-id, x-api-key"


def preflight(method: str, origin: str, headers: str = REQUESTED) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


async def test_cors_is_off_by_default(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client(api_key) as c:
        pre = await c.options(API, headers=preflight("POST", APP))
        assert "access-control-allow-origin" not in pre.headers
        got = await c.get(API, headers={"Origin": APP})
        assert got.status_code == 200
        assert not [h for h in got.headers if h.startswith("access-control-")]


async def test_preflight_and_responses_for_an_allowed_origin(instance_factory: InstanceFactory, api_key: str) -> None:
    inst = await instance_factory("cors", app__cors_allow_origins=(APP, "http://127.0.0.1:5173"))
    async with inst.client() as anon, inst.client(api_key) as c:
        for path, method in (
            (API, "POST"),
            (f"{API}/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "PATCH"),
            ("/api/v1/query", "POST"),
        ):
            pre = await anon.options(path, headers=preflight(method, APP))
            assert pre.status_code == 204, pre.text  # no key needed: browsers send none with a preflight
            assert pre.headers["access-control-allow-origin"] == APP
            assert pre.headers["vary"] == "Origin"
            allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
            assert {h.strip() for h in REQUESTED.split(",")} <= allowed
            assert method in pre.headers["access-control-allow-methods"]
            assert pre.headers["access-control-max-age"] == "600"
            assert "access-control-allow-credentials" not in pre.headers

        created = await c.post(API, json={"title": "cors"}, headers={"Origin": APP})
        assert created.status_code == 201
        assert created.headers["access-control-allow-origin"] == APP
        exposed = {h.strip().lower() for h in created.headers["access-control-expose-headers"].split(",")}
        assert {"etag", "location", "retry-after", "x-request-id", "idempotent-replayed", "x-session-id"} <= exposed
        assert {"x-run-id"} <= exposed
        # Errors too, or a browser app could not read why it failed.
        refused = await anon.get(API, headers={"Origin": APP})
        assert_problem(refused, 401, "UNAUTHORIZED")
        assert refused.headers["access-control-allow-origin"] == APP
        # Other origins get no Access-Control-Allow-Origin: the browser withholds the response.
        other = await c.get(API, headers={"Origin": "https://evil.example"})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers
        # OPTIONS without Origin is not CORS: the usual Allow answer.
        plain = await anon.options(API)
        assert plain.status_code == 204
        assert "POST" in plain.headers["allow"]


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        (preflight("POST", "https://evil.example"), "Origin"),
        (preflight("POST", APP, "x-api-key, x-secret-thing"), "headers"),
        (preflight("TRACE", APP), "method"),
    ],
)
async def test_refused_preflight_is_a_problem(
    instance_factory: InstanceFactory, headers: dict[str, str], what: str
) -> None:
    inst = await instance_factory("cors-refused", app__cors_allow_origins=(APP,))
    async with inst.client() as anon:
        resp = await anon.options(API, headers=headers)
        body = assert_problem(resp, 400, "CORS_NOT_ALLOWED")
        assert what in body["detail"]
        assert "access-control-allow-origin" not in resp.headers
        assert resp.headers["x-request-id"]


async def test_any_origin_without_credentials(instance_factory: InstanceFactory, api_key: str) -> None:
    inst = await instance_factory("cors-any", app__cors_allow_origins=("*",))
    async with inst.client(api_key) as c:
        pre = await c.options(API, headers=preflight("GET", "http://anything.example:8080"))
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "*"
        got = await c.get(API, headers={"Origin": "http://anything.example:8080"})
        assert got.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in got.headers


def test_bad_cors_or_proxy_settings_fail_at_startup(servers: TestServers) -> None:
    with pytest.raises(ValueError, match="CORS_ALLOW_CREDENTIALS"):
        create_app(make_settings(servers, "bad", app__cors_allow_origins=("*",), app__cors_allow_credentials=True))
    with pytest.raises(ValueError, match="CORS_ALLOW_ORIGINS"):
        create_app(make_settings(servers, "bad", app__cors_allow_origins=("app.example.com",)))
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        create_app(make_settings(servers, "bad", app__trusted_proxies=("nginx",)))
