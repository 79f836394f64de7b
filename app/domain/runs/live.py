"""`LiveRun`: one run executing on this instance, from its start to its `done`.

Read top to bottom: `drive` consumes the agent's events into the recorder (stream, then Postgres) while the
heartbeat renews the lease; an interrupt (local, control message or marker) stops the agent; `finish` waits
for the events to be stored, commits the final status (fenced: a run reaped meanwhile writes nothing), then
releases the lease and appends `done` in one Valkey step."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.agents.base import AgentRun, AnswerOutcome
from app.config.settings import RunSettings
from app.domain.runs.recorder import EventRecorder, stream_fields
from app.domain.runs.store import RunStore, RunTotals, StartedRun
from app.domain.sessions.valkey_keys import active_key, events_key, interrupt_key
from app.lib import metrics
from app.lib.logging import bind_log_context
from app.lib.tasks import cancel_and_wait
from app.lib.valkey.control import SignalMarker
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.lease import RunLease

logger = logging.getLogger(__name__)

RUN_LOST = {"code": "RUN_LOST", "message": "The run lost its lease to another owner."}


@dataclass
class Outcome:
    """How the run is going to end, gathered from its events."""

    reason: str = "completed"  # completed | interrupted | error
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    totals: RunTotals = field(default_factory=RunTotals)

    def fail(self, code: str, message: str) -> dict[str, Any]:
        self.reason = "error"
        self.error = {"code": code, "message": message}
        return self.error


class LiveRun:
    def __init__(
        self,
        started: StartedRun,
        *,
        agent: AgentRun,
        recorder: EventRecorder,
        lease: RunLease,
        lease_token: bytes,
        store: RunStore,
        markers: SignalMarker,
        settings: RunSettings,
        on_end: Callable[[LiveRun], Awaitable[None]],
    ) -> None:
        self.started = started
        self.session_id = started.session_id
        self.run_id = started.run_id
        self.agent = agent
        self.recorder = recorder
        self.lease = lease
        self.lease_token = lease_token
        self.store = store
        self.markers = markers
        self.settings = settings
        self.on_end = on_end
        self.t0 = time.monotonic()
        self.interrupt_requested = asyncio.Event()
        self.interrupt_at: float | None = None
        self.lease_lost = False
        self.finished = asyncio.Event()
        self.outcome = Outcome()
        self.open_questions: list[str] = []
        """Ids of the `question` events not yet answered, oldest first (an answer without an id meets the oldest)."""
        self.task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.drive(), name=f"run-{self.run_id}")

    # -- signals from clients ------------------------------------------------------------------------

    def request_interrupt(self) -> None:
        if self.interrupt_at is None:
            self.interrupt_at = time.monotonic()
        self.interrupt_requested.set()

    async def answer(self, answer: str, question_id: str | None) -> AnswerOutcome:
        outcome = await self.agent.answer(answer, question_id)
        if outcome == "delivered":
            answered = question_id or (self.open_questions[0] if self.open_questions else None)
            if answered in self.open_questions:
                self.open_questions.remove(answered)
            # The user's side of the conversation, as delivered: the prompt, then each answer.
            message: dict[str, Any] = {"role": "user", "content": [{"type": "text", "text": answer}]}
            message["question_id"] = answered
            message["uuid"] = str(uuid.uuid4())
            self.recorder.add_now("message", message)
        return outcome

    async def set_permission_mode(self, mode: str) -> None:
        await self.agent.set_permission_mode(mode)

    # -- the run -------------------------------------------------------------------------------------

    async def drive(self) -> None:
        # This task's own log context (a copy): the ids stay on its lines after the request that started it ends.
        bind_log_context(session_id=self.session_id, run_id=self.run_id)
        logger.info("run started")
        consumer = asyncio.create_task(self._consume(), name=f"consume-{self.run_id}")
        watcher = asyncio.create_task(self.interrupt_requested.wait())
        # Renews the lease until `finish` releases it: a final commit that waits out a database outage must
        # not let the lease lapse.
        self._heartbeat = asyncio.create_task(self._renew_lease(), name=f"heartbeat-{self.run_id}")
        try:
            done, _ = await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if consumer not in done:
                await self._stop_agent(consumer)
        except Exception as exc:
            logger.exception("run %s failed", self.run_id)
            self.recorder.add_now("error", self.outcome.fail("AGENT_ERROR", str(exc) or type(exc).__name__))
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await self.agent.aclose()
            try:
                await self.finish()
                logger.info(
                    "run finished",
                    extra={"reason": self.outcome.reason, "duration_ms": round(self._elapsed_ms(), 1)},
                )
            finally:
                await self._stop_heartbeat()
                await self.recorder.aclose()
                self.finished.set()
                await self.on_end(self)

    async def _stop_agent(self, consumer: asyncio.Task[None]) -> None:
        """An interrupt (or a lost lease): stop the agent, let it report how it ended, then end the run."""
        with contextlib.suppress(Exception):
            await self.agent.interrupt()
        if self.agent.interrupt_grace > 0 and not self.lease_lost:
            await asyncio.wait({consumer}, timeout=self.agent.interrupt_grace)
        await cancel_and_wait(consumer)
        if self.lease_lost:
            self.recorder.add_now("error", self.outcome.fail(RUN_LOST["code"], RUN_LOST["message"]))
            return
        if self.outcome.reason != "error":
            self.outcome.reason = "interrupted"
        if self.outcome.result is None:
            # Every run that did not fail ends with a `result`, an interrupted one too.
            self.outcome.result = self._interrupted_result()
            self.recorder.add_now("result", self.outcome.result)

    def _elapsed_ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000

    def _interrupted_result(self) -> dict[str, Any]:
        totals = self.outcome.totals
        return {
            "session_id": str(self.session_id),
            "run_id": str(self.run_id),
            "is_error": False,
            "num_turns": totals.num_turns,
            "duration_ms": int(self._elapsed_ms()),
            "total_cost_usd": totals.total_cost_usd,
            "usage": {"input_tokens": totals.input_tokens, "output_tokens": totals.output_tokens},
            "result": None,
            "structured_output": None,
            "stop_reason": "interrupted",
        }

    def _user_turn(self) -> dict[str, Any]:
        return {
            "role": "user",
            "content": [{"type": "text", "text": self.started.options.prompt}],
            "uuid": str(uuid.uuid4()),
        }

    async def _consume(self) -> None:
        outcome = self.outcome
        recorded_prompt = False
        try:
            async for event in self.agent.events():
                data = event.data  # copied before any change: the agent's own dict is left alone
                name = event.event
                if name == "done":
                    continue  # only the run itself ends a stream
                if name == "init":
                    data = dict(data)
                    await self._on_init(data)
                    data = {"session_id": str(self.session_id), "run_id": str(self.run_id), **data}
                elif not recorded_prompt:
                    recorded_prompt = True  # a backend without `init`: the prompt still comes first
                    await self.recorder.add("message", self._user_turn())
                if name == "result":
                    data = {
                        "session_id": str(self.session_id),
                        "run_id": str(self.run_id),
                        **data,
                        "duration_ms": int(self._elapsed_ms()),
                    }
                    self._count(data)
                    outcome.result = data
                    if data.get("is_error"):
                        outcome.reason = "error"
                elif name == "error":
                    outcome.reason = "error"
                    outcome.error = {
                        "code": str(data.get("code", "AGENT_ERROR")),
                        "message": str(data.get("message", "")),
                    }
                await self.recorder.add(name, data)
                if name == "question":
                    if data.get("question_id"):
                        self.open_questions.append(str(data["question_id"]))
                    await self._tell_waiting()
                if name == "init":
                    recorded_prompt = True
                    await self.recorder.add("message", self._user_turn())
        except Exception as exc:
            logger.exception("agent of run %s raised", self.run_id)
            self.recorder.add_now("error", outcome.fail("AGENT_ERROR", str(exc) or type(exc).__name__))
            return
        if outcome.result is None and outcome.reason != "error":
            self.recorder.add_now("error", outcome.fail("AGENT_ERROR", "The agent ended without a result."))

    async def _tell_waiting(self) -> None:
        try:
            await self.store.run_waiting(self.run_id)
        except Exception:
            logger.warning("run %s: could not record that it waits for an answer", self.run_id, exc_info=True)

    async def _on_init(self, data: dict[str, Any]) -> None:
        # A backend's own session id (e.g. the Claude SDK's) is kept on the session for resume and fork,
        # not sent to clients.
        agent_session_id = data.pop("agent_session_id", None)
        if agent_session_id:
            self.outcome.totals.agent_session_id = str(agent_session_id)
            try:
                await self.store.keep_agent_session(self.session_id, str(agent_session_id))
            except Exception:
                logger.warning("run %s: could not keep the agent session id yet", self.run_id, exc_info=True)

    def _count(self, result: dict[str, Any]) -> None:
        totals = self.outcome.totals
        usage = result.get("usage") or {}
        totals.num_turns += int(result.get("num_turns") or 0)
        totals.total_cost_usd += float(result.get("total_cost_usd") or 0.0)
        totals.input_tokens += int(usage.get("input_tokens") or 0)
        totals.output_tokens += int(usage.get("output_tokens") or 0)

    # -- the lease -----------------------------------------------------------------------------------

    async def _renew_lease(self) -> None:
        """Renews the lease and, as a backstop for a missed control message, polls the interrupt marker.

        Another holder of the lease does not by itself mean the run is lost (after a Valkey flush anyone
        could have set the key): Postgres decides. Only when Postgres no longer has this run running (the
        reaper ended it) does the run stop, with RUN_LOST."""
        renew_every = self.settings.lease_renew_interval
        last_renew = time.monotonic()
        key = active_key(self.session_id)
        while True:
            await asyncio.sleep(min(1.0, renew_every))
            try:
                if await self.markers.get(interrupt_key(self.session_id)) == str(self.run_id):
                    self.request_interrupt()
                if time.monotonic() - last_renew < renew_every:
                    continue
                if not await self.lease.renew(key, self.lease_token):
                    if await self.store.status_of(self.run_id) != "running":
                        logger.error("run %s was ended by another instance", self.run_id)
                        self.lease_lost = True
                        self.interrupt_requested.set()
                        return
                    await self.lease.take(key, self.lease_token)
                last_renew = time.monotonic()
            except VALKEY_ERRORS:
                logger.warning("run %s: heartbeat could not reach Valkey", self.run_id)
            except Exception:
                logger.warning("run %s: heartbeat check failed", self.run_id, exc_info=True)

    async def _stop_heartbeat(self) -> None:
        await cancel_and_wait(self._heartbeat)

    # -- the end -------------------------------------------------------------------------------------

    async def finish(self) -> None:
        """Events stored, final status committed, then lease released and `done` appended atomically: a
        client that sees `done` can start the next run at once."""
        outcome = self.outcome
        # Every event is in the stream before the status says the run is over; the final commit and the last
        # events' trip to Postgres overlap (backpressure keeps that backlog small), and both precede `done`.
        await self.recorder.wait_streamed(timeout=120)
        committed, _ = await asyncio.gather(
            self._retry(
                "commit final status",
                lambda: self.store.finish(
                    self.run_id,
                    self.session_id,
                    status=outcome.reason,
                    result=outcome.result,
                    error=outcome.error,
                    totals=outcome.totals,
                ),
            ),
            self.recorder.wait_persisted(timeout=120),
        )
        metrics.active_runs.dec()
        metrics.runs_total.labels(outcome.reason).inc()
        await self._stop_heartbeat()  # no renewal may re-take the lease once it is released
        if committed is False:
            # Reaped while cut off: the reaper already ended the stream; only our lease (if any) goes.
            with contextlib.suppress(*VALKEY_ERRORS):
                await self.lease.release(active_key(self.session_id), self.lease_token)
            return
        done = msgspec.json.encode({"reason": outcome.reason})

        async def release() -> bool:
            _, entry_id = await self.lease.release_with_entry(
                active_key(self.session_id),
                self.lease_token,
                events_key(self.session_id),
                stream_fields("done", done, self.run_id),
                self.settings.events_ttl,
            )
            self.recorder.queue_for_database(entry_id, "done", done)
            return True

        await self._retry("release lease", release)
        if self.interrupt_at is not None:
            metrics.interrupt_latency_seconds.observe(time.monotonic() - self.interrupt_at)
        await self.recorder.wait_persisted(timeout=10)

    async def _retry(self, what: str, action: Callable[[], Awaitable[bool]], attempts: int = 40) -> bool | None:
        """Retries an end-of-run write through a short outage; None when it never succeeded."""
        delay = 0.05
        for attempt in range(attempts):
            try:
                return await action()
            except Exception:
                logger.warning("run finish: %s failed (attempt %d)", what, attempt + 1, exc_info=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        logger.error("run finish: gave up on %s", what)
        return None
