"""Run events reach Postgres through the instance's persister (binary COPY, with an INSERT ... ON CONFLICT DO
NOTHING for a batch COPY refuses): every event once, in stream order; replays ignored; the rows of a deleted
session dropped without losing anyone else's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from uuid import UUID

import msgspec
from sqlalchemy import delete, func, select

from app.db.models import AgentSession, SessionEvent
from app.domain.runs.recorder import MAX_PENDING, EventBatch, EventRecorder, Row, insert_events, persist_events
from app.domain.sessions.valkey_keys import events_key
from tests.instances import Instance


async def _new_session(instance: Instance, api_key: str) -> UUID:
    async with instance.client(api_key) as client:
        return UUID((await client.post("/api/v1/sessions", json={})).json()["id"])


async def _stored(instance: Instance, session_id: UUID) -> list[SessionEvent]:
    async with instance.components.alchemy.get_session() as db:
        result = await db.execute(
            select(SessionEvent).where(SessionEvent.session_id == session_id).order_by(SessionEvent.id)
        )
        return list(result.scalars())


def _rows(run_id: UUID, first_seq: int, count: int, event: str = "message") -> list[Row]:
    ms = int(datetime.now(UTC).timestamp() * 1000)
    return [
        (f"{ms}-{seq}", event, msgspec.json.encode({"n": seq}), run_id) for seq in range(first_seq, first_seq + count)
    ]


async def test_a_burst_is_stored_once_each_in_stream_order(a: Instance, api_key: str) -> None:
    session_id, run_id = await _new_session(a, api_key), uuid.uuid4()
    manager = a.components.run_manager
    recorder = EventRecorder(
        manager.events, manager.persister, session_id=session_id, run_id=run_id, stream_key=events_key(session_id)
    )
    count = 3 * MAX_PENDING + 17  # past the backlog limit: the agent side waits for the stores several times
    text = 'é ✓ \\ " \n\t\u0001 end'  # escapes and multi-byte characters survive the binary COPY
    started = datetime.now(UTC)
    try:
        for n in range(count):
            await recorder.add("partial" if n % 100 == 50 else "message", {"n": n, "text": text})
        await recorder.wait_persisted(timeout=60)
    finally:
        await recorder.aclose()

    expected = [n for n in range(count) if n % 100 != 50]  # `partial` is never stored
    stored = await _stored(a, session_id)
    assert [row.data["n"] for row in stored] == expected
    assert all(row.data == {"n": row.data["n"], "text": text} and row.event == "message" for row in stored)
    assert all(started <= row.created_at == row.updated_at <= datetime.now(UTC) for row in stored)
    # Ordered by Postgres's own id (insertion order) and by the stream id alike: the same order, no gaps.
    keys = [(row.stream_ms, row.stream_seq) for row in stored]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert {row.run_id for row in stored} == {run_id}

    # The same entries written again (a retry after a commit whose reply was lost): nothing new, nothing lost.
    entries = await manager.events.read_after(events_key(session_id), "0-0", count=count)
    replay: list[Row] = [(e.id, e.fields["e"].decode(), e.fields["d"], run_id) for e in entries]
    assert len(replay) == count
    await persist_events(a.components.alchemy, session_id, replay[: count // 2])
    await persist_events(a.components.alchemy, session_id, replay)
    again = await _stored(a, session_id)
    assert [row.id for row in again] == [row.id for row in stored]


async def test_a_batch_with_replayed_ids_stores_only_the_new_ones(a: Instance, api_key: str) -> None:
    session_id, run_id = await _new_session(a, api_key), uuid.uuid4()
    rows = _rows(run_id, 1, 100)
    await persist_events(a.components.alchemy, session_id, rows[:40])
    # COPY refuses the batch (ids 1-40 exist); the fallback stores 41-100 once and keeps 1-40 as they were.
    await persist_events(a.components.alchemy, session_id, rows)
    stored = await _stored(a, session_id)
    assert [row.data["n"] for row in stored] == list(range(1, 101))


async def test_rows_of_a_deleted_session_are_dropped_and_the_others_kept(a: Instance, api_key: str) -> None:
    kept_id, gone_id = await _new_session(a, api_key), await _new_session(a, api_key)
    async with a.components.alchemy.get_session() as db:
        await db.execute(delete(AgentSession).where(AgentSession.id == gone_id))
        await db.commit()
    run_id = uuid.uuid4()
    batch = EventBatch(datetime.now(UTC))
    batch.add(kept_id, _rows(run_id, 1, 30))
    batch.add(gone_id, _rows(run_id, 1, 30))
    batch.add(kept_id, _rows(run_id, 31, 30))
    await insert_events(a.components.alchemy, batch)
    assert [row.data["n"] for row in await _stored(a, kept_id)] == list(range(1, 61))
    async with a.components.alchemy.get_session() as db:
        orphans = await db.scalar(select(func.count()).where(SessionEvent.session_id == gone_id))
    assert orphans == 0
    # The connection that saw the refused COPY is back in the pool and works.
    await persist_events(a.components.alchemy, kept_id, _rows(run_id, 61, 5))
    assert len(await _stored(a, kept_id)) == 65
