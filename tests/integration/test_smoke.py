from __future__ import annotations

from tests.instances import Instance


async def test_create_and_get_through_both_instances(a: Instance, b: Instance, api_key: str) -> None:
    async with a.client(api_key) as ca, b.client(api_key) as cb:
        created = await ca.post("/api/v1/sessions", json={"title": "smoke"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        got = await cb.get(f"/api/v1/sessions/{sid}")
        assert got.status_code == 200
        assert got.json()["title"] == "smoke"
        assert got.headers["etag"] == '"1"'
