"""The one place the OpenAI-compatible API touches the runs domain: a response is a run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

from app.domain.runs.schemas import IfBusy, Run, RunOptions
from app.domain.runs.services import STREAM_START, RunService
from app.lib.sse import SSEFrame

PortRun = Run


class RunsPort:
    def __init__(self, runs: RunService) -> None:
        self.runs = runs

    async def create(
        self, owner_key_id: UUID, session_id: UUID | None, options: RunOptions, *, if_busy: IfBusy = "reject"
    ) -> Run:
        return (await self.runs.create(owner_key_id, session_id, options, if_busy=if_busy)).run

    async def get(self, owner_key_id: UUID, run_id: UUID) -> Run:
        return await self.runs.get(owner_key_id, run_id)

    async def wait(self, owner_key_id: UUID, run_id: UUID, timeout: float) -> Run:
        return await self.runs.wait(owner_key_id, run_id, timeout)

    async def cancel(self, owner_key_id: UUID, run_id: UUID) -> Run:
        run, _interrupting = await self.runs.cancel(owner_key_id, run_id)
        return run

    async def run_events(
        self, owner_key_id: UUID, run_id: UUID, after: str = STREAM_START
    ) -> AsyncIterator[list[SSEFrame] | None]:
        """This run's events after `after` (exclusive), live until its `done`; None items are idle ticks."""
        _run, stream = await self.runs.run_events(owner_key_id, run_id, after)
        async for batch in stream:
            yield batch

    async def delete(self, owner_key_id: UUID, run_id: UUID) -> None:
        await self.runs.delete(owner_key_id, run_id)
