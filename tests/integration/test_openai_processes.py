"""The sync `openai` client against two real Granian processes sharing Postgres and Valkey (no thread tricks:
the servers are other processes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.processes import GranianProcess
from tests.servers import TestServers

pytestmark = pytest.mark.processes


@pytest.fixture
def two_processes(servers: TestServers, tmp_path: Path) -> Iterator[tuple[GranianProcess, GranianProcess]]:
    first = GranianProcess.start(servers, "openai-1", tmp_path)
    second = GranianProcess.start(servers, "openai-2", tmp_path)
    yield first, second
    first.kill()
    second.kill()


def client(proc: GranianProcess, key: str) -> OpenAI:
    return OpenAI(base_url=f"{proc.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def test_sync_client_across_processes(two_processes: tuple[GranianProcess, GranianProcess], api_key: str) -> None:
    p1, p2 = two_processes
    with client(p1, api_key) as c1, client(p2, api_key) as c2:
        raw = c1.chat.completions.with_raw_response.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().choices[0].message.content == "Echo: hi"
        session_id = raw.headers["x-session-id"]
        chunks = list(
            c2.chat.completions.create(
                model="demo",
                messages=[{"role": "user", "content": "again please"}],
                metadata={"session_id": session_id},
                stream=True,
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: again please"

        # A background response on process 1, read partly there, resumed on process 2 after the last one seen.
        job = c1.responses.create(model="demo", input="sleep 1", background=True)
        head = []
        with c1.responses.retrieve(job.id, stream=True) as stream:
            for event in stream:
                head.append(event)
                if len(head) == 4:
                    break
        tail = list(c2.responses.retrieve(job.id, stream=True, starting_after=head[-1].sequence_number))
        seen = head + tail
        assert [e.sequence_number for e in seen] == list(range(len(seen)))
        assert seen[-1].type == "response.completed" and seen[-1].response.output_text == "slept 1s"

        # Cancel from the other process; busy session is a ConflictError there too.
        long = c1.responses.create(model="demo", input="sleep 30", background=True)
        with pytest.raises(openai.ConflictError):
            c2.responses.create(model="demo", input="x", previous_response_id=long.id)
        t0 = time.monotonic()
        assert c2.responses.cancel(long.id).status == "cancelled"
        assert time.monotonic() - t0 < 15
        assert c1.responses.retrieve(long.id).status == "cancelled"
