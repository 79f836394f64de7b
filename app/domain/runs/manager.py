"""`RunManager`: the runs this instance owns, and the messages that reach them from any instance.

A run is a task independent of any request: the client that started it may disconnect and rejoin.
Lifecycle: lease (Valkey SET NX) → session `running` (Postgres, fenced) → agent events → recorder →
session final status (Postgres) → lease released and `done` appended in one step."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from sqlalchemy.ext.asyncio import async_object_session
from uuid_utils.compat import uuid7

from app.agents.base import AgentBackend, AgentRequest, AgentRun, AnswerOutcome
from app.config.settings import Settings
from app.db.models import AgentSession
from app.domain.runs.lease import LeaseValue, decode_lease, encode_lease
from app.domain.runs.recorder import EventRecorder, stream_fields
from app.domain.sessions.keys import active_key, events_key, interrupt_key
from app.domain.sessions.schemas import Session
from app.domain.sessions.services import SessionInfra, SessionService
from app.domain.webhooks import outbox as webhook_outbox
from app.lib import metrics
from app.lib.logging import bind_log_context, log_context
from app.lib.problems import ApiError
from app.lib.valkey.errors import VALKEY_ERRORS

logger = logging.getLogger(__name__)

FINAL_STATUS = {"completed": "completed", "interrupted": "interrupted", "error": "error"}


def valkey_unavailable() -> ApiError:
    return ApiError(
        503,
        "VALKEY_UNAVAILABLE",
        "Valkey cannot be reached; runs need it. Try again shortly.",
        title="Valkey unavailable",
        headers={"Retry-After": "2"},
    )


@dataclass
class RunStats:
    agent_session_id: str | None = None
    saw_result: bool = False
    num_turns: int = 0
    total_cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class LocalRun:
    session_id: UUID
    run_id: UUID
    owner_key_id: UUID
    lease_token: bytes
    agent: AgentRun
    recorder: EventRecorder
    started: float = field(default_factory=time.monotonic)
    interrupt_requested: asyncio.Event = field(default_factory=asyncio.Event)
    lease_lost: bool = False
    interrupt_at: float | None = None
    task: asyncio.Task[None] | None = None
    heartbeat: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class RunManager:
    def __init__(
        self, settings: Settings, infra: SessionInfra, alchemy: SQLAlchemyAsyncConfig, backend: AgentBackend
    ) -> None:
        self.settings = settings
        self.infra = infra
        self.alchemy = alchemy
        self.backend = backend
        self.instance_id = settings.app.instance_id
        self.runs: dict[UUID, LocalRun] = {}
        self.draining = False

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start_listening(self) -> None:
        self.infra.control.start(self.on_control_message)

    async def drain(self) -> None:
        """Stop taking runs, let running ones finish for the grace period, then interrupt the rest and wait
        for them to end (their streams get `done`, their leases are released). Safe to call again."""
        self.draining = True
        pending = [r.finished.wait() for r in self.runs.values()]
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.runs.shutdown_grace):
                    await asyncio.gather(*pending)
        for run in list(self.runs.values()):
            run.interrupt_requested.set()
        leftovers = [r.task for r in self.runs.values() if r.task is not None]
        if leftovers:
            await asyncio.wait(leftovers, timeout=15)

    async def close(self) -> None:
        """After `drain`: stop listening for control messages and close the backend."""
        await self.infra.control.stop()
        await self.backend.aclose()

    # -- starting a run ------------------------------------------------------------------------------

    async def start_run(self, owner_key_id: UUID, session: Session, options: dict[str, Any]) -> tuple[UUID, Session]:
        """Takes the lease, marks the session running and starts the agent; returns (run_id, session)."""
        if self.draining:
            raise ApiError(
                503,
                "SHUTTING_DOWN",
                "This instance is shutting down; retry on another.",
                title="Shutting down",
                headers={"Retry-After": "1"},
            )
        session_id = session.id
        run_id = UUID(str(uuid7()))
        started_at = datetime.now(UTC)
        token = encode_lease(LeaseValue(run_id=run_id, instance_id=self.instance_id, started_at=started_at))
        try:
            acquired = await self.infra.lease.acquire(active_key(session_id), token)
        except VALKEY_ERRORS as exc:
            raise valkey_unavailable() from exc
        if not acquired:
            raise ApiError(409, "SESSION_BUSY", "The session already has an active run.", title="Session busy")
        try:
            await self._close_out_stale_run(owner_key_id, session_id)
            await self.infra.events.reset(events_key(session_id))

            def mark_running(row: AgentSession) -> None:
                row.status = "running"
                row.active_run_id = run_id
                row.active_instance_id = self.instance_id
                row.active_started_at = started_at
                row.last_run_at = started_at
                row.last_run_id = run_id
                if options.get("model"):
                    row.model = options["model"]
                if options.get("permission_mode"):
                    row.permission_mode = options["permission_mode"]

            async with self.alchemy.get_session() as db:
                service = SessionService(session=db).bind(self.infra)
                session = await service.update_fenced(session_id, owner_key_id, mark_running)
                row = await service.load_owned(session_id, owner_key_id)
                # A fork's first run continues the parent's conversation under a backend session of its own.
                resume, fork = row.agent_session_id, False
                if resume is None and row.agent_fork_from:
                    resume, fork = row.agent_fork_from, True
        except BaseException as exc:
            with contextlib.suppress(*VALKEY_ERRORS):
                await self.infra.lease.release(active_key(session_id), token)
            if isinstance(exc, VALKEY_ERRORS):
                raise valkey_unavailable() from exc
            raise

        request = AgentRequest(
            session_id=str(session_id),
            run_id=str(run_id),
            prompt=options["prompt"],
            model=session.model,
            permission_mode=session.permission_mode,
            allowed_tools=list(options.get("allowed_tools") or []),
            disallowed_tools=list(options.get("disallowed_tools") or []),
            max_turns=options.get("max_turns"),
            system_prompt=options.get("system_prompt"),
            output_format=options.get("output_format"),
            include_partial_messages=bool(options.get("include_partial_messages")),
            resume=resume,
            fork=fork,
        )
        run = LocalRun(
            session_id=session_id,
            run_id=run_id,
            owner_key_id=owner_key_id,
            lease_token=token,
            agent=self.backend.start(request),
            recorder=EventRecorder(
                self.infra.events, self.alchemy, session_id=session_id, run_id=run_id, stream_key=events_key(session_id)
            ),
        )
        self.runs[run_id] = run
        metrics.active_runs.inc()
        # On the starting request's lines too; the run's task binds its own (it outlives the request).
        bind_log_context(session_id=session_id, run_id=run_id)
        run.task = asyncio.create_task(self._drive(run), name=f"run-{run_id}")
        return run_id, session

    async def _close_out_stale_run(self, owner_key_id: UUID, session_id: UUID) -> None:
        """We hold the lease, yet Postgres still shows another run active: its owner died before the
        reaper got to it. End that run's stream properly before this run resets it."""
        async with self.alchemy.get_session() as db:
            row = await SessionService(session=db).bind(self.infra).load_owned(session_id, owner_key_id)
            stale_run = row.active_run_id
        if stale_run is None:
            return
        from app.domain.runs.reaper import append_run_lost

        await append_run_lost(self.infra, self.alchemy, session_id, stale_run, lease_token=None)

    # -- driving a run -------------------------------------------------------------------------------

    async def _drive(self, run: LocalRun) -> None:
        # This task's own log context (a copy): the ids stay on its lines after the request that started it ends.
        bind_log_context(session_id=run.session_id, run_id=run.run_id)
        logger.info("run started")
        reason = "completed"
        stats = RunStats()
        consumer = asyncio.create_task(self._consume(run, stats), name=f"consume-{run.run_id}")
        watcher = asyncio.create_task(run.interrupt_requested.wait())
        # Renews the lease until `_finish` releases it: a final commit that waits out a database outage must not
        # let the lease lapse (followers would take "no lease, final status" for the end, without `done`).
        run.heartbeat = asyncio.create_task(self._heartbeat(run), name=f"heartbeat-{run.run_id}")
        try:
            done, _ = await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if consumer in done:
                reason = consumer.result()
            else:
                reason = "error" if run.lease_lost else "interrupted"
                with contextlib.suppress(Exception):
                    await run.agent.interrupt()
                if run.agent.interrupt_grace > 0 and not run.lease_lost:
                    # The backend reports how the interrupted run ended (its last messages, its result).
                    await asyncio.wait({consumer}, timeout=run.agent.interrupt_grace)
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await consumer
                if run.lease_lost:
                    run.recorder.add("error", {"code": "RUN_LOST", "message": "The run lost its lease."})
                elif not stats.saw_result:
                    # Every run that did not fail ends with a `result` (SPEC §4), an interrupted one too.
                    run.recorder.add("result", self._interrupted_result(run, stats))
        except Exception as exc:
            logger.exception("run %s failed", run.run_id)
            run.recorder.add("error", {"code": "AGENT_ERROR", "message": str(exc) or type(exc).__name__})
            reason = "error"
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await run.agent.aclose()
            try:
                await self._finish(run, reason, stats)
                logger.info(
                    "run finished",
                    extra={"reason": reason, "duration_ms": round((time.monotonic() - run.started) * 1000, 1)},
                )
            finally:
                await self._stop_heartbeat(run)
                await run.recorder.aclose()
                self.runs.pop(run.run_id, None)
                run.finished.set()

    @staticmethod
    def _interrupted_result(run: LocalRun, stats: RunStats) -> dict[str, Any]:
        return {
            "session_id": str(run.session_id),
            "run_id": str(run.run_id),
            "is_error": False,
            "num_turns": stats.num_turns,
            "duration_ms": int((time.monotonic() - run.started) * 1000),
            "total_cost_usd": stats.total_cost_usd,
            "usage": {"input_tokens": stats.input_tokens, "output_tokens": stats.output_tokens},
            "result": None,
            "structured_output": None,
            "stop_reason": "interrupted",
        }

    async def _consume(self, run: LocalRun, stats: RunStats) -> str:
        reason = "completed"
        saw_result = False
        try:
            async for event in run.agent.events():
                data = dict(event.data)
                if event.event == "init":
                    # A backend's own session id (e.g. the Claude SDK's) is kept on the session for resume/fork,
                    # not sent to clients.
                    agent_session_id = data.pop("agent_session_id", None)
                    if agent_session_id:
                        stats.agent_session_id = str(agent_session_id)

                        def keep_agent_session(row: AgentSession) -> None:
                            row.agent_session_id = stats.agent_session_id
                            row.agent_fork_from = None

                        await self._update(run, keep_agent_session)
                    data = {"session_id": str(run.session_id), "run_id": str(run.run_id), **data}
                elif event.event == "result":
                    saw_result = stats.saw_result = True
                    data = {
                        "session_id": str(run.session_id),
                        "run_id": str(run.run_id),
                        **data,
                        "duration_ms": int((time.monotonic() - run.started) * 1000),
                    }
                    usage = data.get("usage") or {}
                    stats.num_turns += int(data.get("num_turns") or 0)
                    stats.total_cost_usd += float(data.get("total_cost_usd") or 0.0)
                    stats.input_tokens += int(usage.get("input_tokens") or 0)
                    stats.output_tokens += int(usage.get("output_tokens") or 0)
                    if data.get("is_error"):
                        reason = "error"
                elif event.event == "error":
                    reason = "error"
                elif event.event == "done":
                    continue  # only the run manager ends a stream
                run.recorder.add(event.event, data)
                if event.event == "question":  # WEBHOOKS HOOK (provisional; moves to the Run code): run.waiting
                    await webhook_outbox.enqueue_in_own_transaction(
                        self.alchemy,
                        owner_key_id=run.owner_key_id,
                        event_type="run.waiting",
                        run=webhook_outbox.provisional_run(run.run_id, run.session_id, "running"),
                    )
        except Exception as exc:
            logger.exception("agent of run %s raised", run.run_id)
            run.recorder.add("error", {"code": "AGENT_ERROR", "message": str(exc) or type(exc).__name__})
            return "error"
        if not saw_result and reason != "error":
            run.recorder.add("error", {"code": "AGENT_ERROR", "message": "The agent ended without a result."})
            reason = "error"
        return reason

    async def _heartbeat(self, run: LocalRun) -> None:
        """Renews the lease and, as a backstop for a missed control message, polls the interrupt marker."""
        lease = self.infra.lease
        renew_every = self.settings.runs.lease_renew_interval
        last_renew = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, renew_every))
            try:
                if await self.infra.markers.get(interrupt_key(run.session_id)) == str(run.run_id):
                    run.interrupt_requested.set()
                if time.monotonic() - last_renew >= renew_every:
                    if not await lease.renew(active_key(run.session_id), run.lease_token):
                        logger.error("run %s lost its lease to another owner", run.run_id)
                        run.lease_lost = True
                        run.interrupt_requested.set()
                        return
                    last_renew = time.monotonic()
            except VALKEY_ERRORS:
                logger.warning("run %s: heartbeat could not reach Valkey", run.run_id)

    async def _finish(self, run: LocalRun, reason: str, stats: RunStats) -> None:
        """Final status committed, then lease released and `done` appended atomically (SPEC §3).

        The run's events reach Postgres while the status commits (both must be done before `done`)."""
        await run.recorder.drain_stream()
        status = FINAL_STATUS[reason]

        def mark_finished(row: AgentSession) -> None:
            row.status = status
            if stats.agent_session_id:
                row.agent_session_id = stats.agent_session_id
                row.agent_fork_from = None
            if row.active_run_id == run.run_id:
                row.active_run_id = None
                row.active_instance_id = None
                row.active_started_at = None
            row.total_turns += stats.num_turns
            row.total_cost_usd += stats.total_cost_usd
            row.input_tokens += stats.input_tokens
            row.output_tokens += stats.output_tokens

        # WEBHOOKS HOOK (provisional; moves to the Run code): the run's webhook event joins the outbox in the
        # transaction that commits its final status.
        async def finish_and_notify(row: AgentSession) -> None:
            mark_finished(row)
            db = async_object_session(row)
            assert db is not None
            with db.no_autoflush:
                await webhook_outbox.enqueue_run_event(
                    db,
                    owner_key_id=run.owner_key_id,
                    event_type=webhook_outbox.RUN_EVENT_BY_REASON[reason],
                    run=webhook_outbox.provisional_run(run.run_id, run.session_id, status),
                )

        await asyncio.gather(
            self._retry("commit final status", lambda: self._update(run, finish_and_notify)), run.recorder.drain()
        )
        # Counted before `done` goes out, so a client that saw `done` sees the metrics too.
        metrics.active_runs.dec()
        metrics.runs_total.labels(reason).inc()
        done = msgspec.json.encode({"reason": reason})

        async def release() -> None:
            _, entry_id = await self.infra.lease.release_with_entry(
                active_key(run.session_id),
                run.lease_token,
                events_key(run.session_id),
                stream_fields("done", done, run.run_id),
                self.settings.runs.events_ttl,
            )
            run.recorder.persisted(entry_id, "done", done)

        await self._stop_heartbeat(run)  # no renewal may re-take the lease once it is released
        await self._retry("release lease", release)
        if run.interrupt_at is not None:
            metrics.interrupt_latency_seconds.observe(time.monotonic() - run.interrupt_at)
        await run.recorder.drain(timeout=10)

    @staticmethod
    async def _stop_heartbeat(run: LocalRun) -> None:
        if run.heartbeat is not None:
            run.heartbeat.cancel()
            await asyncio.wait({run.heartbeat})  # its end, without taking on its CancelledError

    async def _update(self, run: LocalRun, mutate: Any) -> None:
        async with self.alchemy.get_session() as db:
            await SessionService(session=db).bind(self.infra).update_fenced(run.session_id, run.owner_key_id, mutate)

    async def _retry(self, what: str, action: Any, attempts: int = 20) -> None:
        delay = 0.05
        for attempt in range(attempts):
            try:
                await action()
                return
            except ApiError as exc:
                if exc.code != "SESSION_LOCKED":
                    logger.error("run finish: %s failed: %s", what, exc)
                    return
            except Exception:
                logger.warning("run finish: %s failed (attempt %d)", what, attempt + 1, exc_info=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        logger.error("run finish: gave up on %s", what)

    # -- control messages ---------------------------------------------------------------------------

    def interrupt_local(self, run_id: UUID) -> bool:
        run = self.runs.get(run_id)
        if run is None:
            return False
        self._request_interrupt(run)
        return True

    @staticmethod
    def _request_interrupt(run: LocalRun) -> None:
        if run.interrupt_at is None:
            run.interrupt_at = time.monotonic()
        run.interrupt_requested.set()

    async def answer_local(self, run_id: UUID, answer: str, question_id: str | None) -> AnswerOutcome | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        return await run.agent.answer(answer, question_id)

    async def on_control_message(self, message: dict[str, Any]) -> None:
        try:
            run_id = UUID(message["run_id"])
        except (KeyError, ValueError, TypeError):
            return
        run = self.runs.get(run_id)
        if run is None:
            return
        with log_context(session_id=run.session_id, run_id=run.run_id):
            await self._handle_control(run, message)

    async def _handle_control(self, run: LocalRun, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "interrupt":
            self._request_interrupt(run)
        elif kind == "permission_mode":
            await run.agent.set_permission_mode(str(message.get("permission_mode")))
        elif kind == "answer":
            outcome = await run.agent.answer(str(message.get("answer", "")), message.get("question_id"))
            await self.infra.control.reply(str(message["reply_key"]), {"outcome": outcome})

    # -- reading the lease -------------------------------------------------------------------------

    async def current_lease(self, session_id: UUID) -> LeaseValue | None:
        try:
            return decode_lease(await self.infra.lease.get(active_key(session_id)))
        except VALKEY_ERRORS as exc:
            raise valkey_unavailable() from exc
