"""`RunReaper`: ends runs whose owner died and moves queues nobody is moving.

Every instance runs one. A run is lost when Postgres has it running and either its instance no longer
announces its presence, or its lease has been missing, each confirmed over a window longer than the time a
live owner needs to write its key again after a Valkey flush (so a flush never reaps a live run). A lost run
ends `error` with `error {code: RUN_LOST}` and `done {reason: error}` on its stream, and the session's next
queued run starts. A session with queued runs and no active run (the instance that accepted them died, or
the one that ended the last run died before starting the next) gets its next run started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from app.config.settings import Settings
from app.domain.runs.lease_value import LeaseValue, encode_lease
from app.domain.runs.manager import RunManager
from app.domain.runs.recorder import persist_events, stream_fields
from app.domain.runs.store import RunStore, RunTotals
from app.domain.sessions.valkey_keys import active_key, events_key
from app.lib.tasks import cancel_and_wait
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.presence import InstancePresence

logger = logging.getLogger(__name__)

RUN_LOST = {"code": "RUN_LOST", "message": "The instance running this session stopped; the run was lost."}


class RunReaper:
    def __init__(self, settings: Settings, manager: RunManager, store: RunStore, presence: InstancePresence) -> None:
        self.settings = settings
        self.manager = manager
        self.store = store
        self.presence = presence
        self._missing_since: dict[UUID, float] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def presence_grace(self) -> float:
        """An absent presence key must stay absent this long: longer than a live owner takes to rewrite it."""
        return 2 * self.settings.runs.presence_interval + 1.0

    @property
    def lease_grace(self) -> float:
        return self.settings.runs.lease_renew_interval + 1.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="run-reaper")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        interval = self.settings.runs.reaper_interval
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # noqa: S311 - jitter only
            try:
                await self.sweep()
            except Exception:
                self._missing_since.clear()  # nothing confirmed while Valkey or Postgres was unreachable
                logger.debug("reaper sweep failed", exc_info=True)

    async def sweep(self) -> list[UUID]:
        """One pass; returns the runs reaped."""
        in_flight = await self.store.sessions_in_flight()
        if not in_flight:
            self._missing_since.clear()
            return []
        active = [(sid, rid, inst) for sid, rid, inst, _ in in_flight if rid is not None]
        active_ids: set[UUID] = {rid for _, rid, _ in active if rid is not None}
        alive = await self.presence.alive(sorted({inst for _, _, inst in active if inst}))
        leases = await self.manager.lease.get_many([active_key(sid) for sid, _, _ in active])
        now = time.monotonic()
        reaped: list[UUID] = []
        for (session_id, active_run, instance), lease in zip(active, leases, strict=True):
            if active_run is None:
                continue
            run_id: UUID = active_run
            if instance == self.manager.instance_id and run_id in self.manager.runs:
                self._missing_since.pop(run_id, None)
                continue  # ours and alive: nothing to confirm
            gone = not alive.get(instance or "", False)
            if not gone and lease is not None:
                self._missing_since.pop(run_id, None)
                continue
            first = self._missing_since.setdefault(run_id, now)
            grace = self.presence_grace if gone else self.lease_grace
            if now - first >= grace and await self.reap(session_id, run_id):
                reaped.append(run_id)
                self._missing_since.pop(run_id, None)
        for gone_run in set(self._missing_since) - active_ids:
            del self._missing_since[gone_run]
        for session_id, current, _, queued in in_flight:
            if current is None and queued > 0:
                await self.manager.start_next(session_id)
        return reaped

    async def reap(self, session_id: UUID, run_id: UUID) -> bool:
        """Holds the lease (so the stream ends before any new run resets it), ends the run in Postgres
        (fenced: only if it is still running), then appends its `error` and `done`, and starts the next."""
        token = encode_lease(
            LeaseValue(
                run_id=run_id, instance_id=f"reaper:{self.settings.app.instance_id}", started_at=datetime.now(UTC)
            )
        )
        key = active_key(session_id)
        try:
            await self.manager.lease.take(key, token)
        except VALKEY_ERRORS:
            return False
        try:
            ended = await self.store.finish(
                run_id, session_id, status="error", result=None, error=RUN_LOST, totals=RunTotals()
            )
            if not ended:
                await self.manager.lease.release(key, token)
                return False
            await append_run_lost(self.manager, session_id, run_id, token)
            logger.warning("reaped lost run %s of session %s", run_id, session_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.manager.lease.release(key, token)
            raise
        await self.manager.start_next(session_id)
        return True


async def append_run_lost(manager: RunManager, session_id: UUID, run_id: UUID, lease_token: bytes) -> None:
    """`error RUN_LOST` then `done {error}` (released with the reaper's lease) on the stream and in Postgres."""
    error_data = msgspec.json.encode(RUN_LOST)
    done_data = msgspec.json.encode({"reason": "error"})
    stream = events_key(session_id)
    (error_id,) = await manager.events.append_many(stream, [stream_fields("error", error_data, run_id)])
    _, done_id = await manager.lease.release_with_entry(
        active_key(session_id),
        lease_token,
        stream,
        stream_fields("done", done_data, run_id),
        manager.settings.runs.events_ttl,
    )
    await persist_events(
        manager.store.alchemy,
        session_id,
        [(error_id, "error", error_data, run_id), (done_id, "done", done_data, run_id)],
    )
