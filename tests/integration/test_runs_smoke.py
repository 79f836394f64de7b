from __future__ import annotations

from tests.helpers import collect_sse
from tests.instances import Instance


async def test_echo_run_streams_full_sequence(a: Instance, api_key: str) -> None:
    async with a.client(api_key) as client:
        async with client.stream("POST", "/api/v1/query", json={"prompt": "hello world"}) as resp:
            assert resp.status_code == 200, await resp.aread()
            events = await collect_sse(resp)
    names = [e.event for e in events]
    assert names[0] == "init"
    assert names[-1] == "done"
    assert events[-1].data == {"reason": "completed"}
    assert "result" in names
    assert events[1].event == "message" and events[1].data["role"] == "user"
    text = "".join(
        b["text"] for e in events if e.event == "message" and e.data["role"] == "assistant" for b in e.data["content"]
    )
    assert text == "Echo: hello world"
    ids = [e.id for e in events]
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(int(x) for x in i.split("-")))
