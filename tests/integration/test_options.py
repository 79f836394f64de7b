"""OPTIONS names every method a path serves (app.lib.routing works around litestar#4169)."""

from __future__ import annotations

import re
import uuid

from tests.instances import Instance


async def test_options_allow_lists_every_method_of_the_path(shared_instance: Instance, api_key: str) -> None:
    async with shared_instance.client(api_key) as c:
        document = (await c.get("/docs/openapi.json")).json()
        sid = uuid.uuid4()
        checked = 0
        for template, operations in document["paths"].items():
            path = re.sub(r"\{[a-z_]*id\}", str(sid), template)
            expected = {method.upper() for method in operations} | {"OPTIONS"}
            resp = await c.options(path)
            assert resp.status_code == 204, (path, resp.status_code)
            allowed = {m.strip() for m in resp.headers["allow"].split(",")}
            assert allowed == expected, (template, allowed, expected)
            checked += 1
        assert checked >= 10
        # A path with several methods, which the Litestar bug got wrong.
        assert {m.strip() for m in (await c.options("/api/v1/sessions")).headers["allow"].split(",")} == {
            "GET",
            "POST",
            "OPTIONS",
        }
