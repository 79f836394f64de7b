"""`RunManager`: the runs this instance executes, how they start, and the control messages that reach them.

Starting a run: `RunStore` decides in Postgres (the fence) while this instance takes the Valkey lease inside
that same transaction; then a `LiveRun` drives the agent. When a run ends, this instance starts the session's
next queued run, so a queue moves on wherever its previous run ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from app.agents.base import AgentBackend, AgentRequest, AgentRequestError, AnswerOutcome
from app.config.settings import Settings
from app.db.models import AgentSession
from app.domain.runs import control
from app.domain.runs.errors import invalid_run_options, shutting_down, valkey_unavailable
from app.domain.runs.lease_value import LeaseValue, encode_lease
from app.domain.runs.live import LiveRun
from app.domain.runs.recorder import EventPersister, EventRecorder
from app.domain.runs.schemas import IfBusy, RunOptions
from app.domain.runs.store import RunStore, StartedRun, Submitted
from app.domain.sessions.valkey_keys import active_key, events_key, interrupt_key
from app.lib import metrics
from app.lib.logging import bind_log_context, log_context
from app.lib.valkey.control import ControlChannel, SignalMarker
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.event_log import EventLog
from app.lib.valkey.lease import RunLease

logger = logging.getLogger(__name__)

# How long a starting run waits for the previous run's lease to go (its owner commits its end, then releases
# the lease and appends `done` a moment later) before taking it over.
LEASE_HANDOVER_WAIT = 2.0


def agent_request(
    options: RunOptions,
    *,
    session_id: UUID | None,
    run_id: UUID | None,
    model: str | None,
    permission_mode: str | None,
    resume: str | None = None,
    fork: bool = False,
) -> AgentRequest:
    """The one place a run's options become the backend's request."""
    return AgentRequest(
        session_id=str(session_id) if session_id else "",
        run_id=str(run_id) if run_id else "",
        # A member left out (UNSET) or sent as null means the same to the backend: not asked for.
        prompt=options.prompt,
        model=options.model or model,
        permission_mode=options.permission_mode or permission_mode,
        allowed_tools=list(options.allowed_tools or []),
        disallowed_tools=list(options.disallowed_tools or []),
        max_turns=options.max_turns or None,
        system_prompt=options.system_prompt if isinstance(options.system_prompt, str) else None,
        output_format=options.output_format or None,
        include_partial_messages=options.include_partial_messages is True,
        resume=resume,
        fork=fork,
    )


class RunManager:
    def __init__(
        self,
        settings: Settings,
        *,
        store: RunStore,
        lease: RunLease,
        events: EventLog,
        channel: ControlChannel,
        markers: SignalMarker,
        backend: AgentBackend,
    ) -> None:
        self.settings = settings
        self.store = store
        self.lease = lease
        self.events = events
        self.channel = channel
        self.markers = markers
        self.backend = backend
        self.instance_id = settings.app.instance_id
        self.runs: dict[UUID, LiveRun] = {}
        self.persister = EventPersister(store.alchemy)
        self.draining = False

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start_listening(self) -> None:
        self.channel.start(self.on_control_message)

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
            run.request_interrupt()
        leftovers = [r.task for r in self.runs.values() if r.task is not None]
        if leftovers:
            await asyncio.wait(leftovers, timeout=15)

    async def close(self) -> None:
        """After `drain`: stop listening for control messages and close the backend."""
        await self.channel.stop()
        await self.backend.aclose()
        await self.persister.aclose()

    # -- checks before anything is written -----------------------------------------------------------

    def validate(self, options: RunOptions, *, model: str | None, permission_mode: str | None) -> None:
        """The backend's own checks (models, tools, ...): 422 before any session, lease or run exists."""
        try:
            self.backend.validate(
                agent_request(options, session_id=None, run_id=None, model=model, permission_mode=permission_mode)
            )
        except AgentRequestError as exc:
            raise invalid_run_options(str(exc)) from exc

    def check_session_settings(self, model: str | None, permission_mode: str | None) -> None:
        """The backend's check of a session's own `model` and `permission_mode` (raises `AgentRequestError`):
        creating or patching a session refuses what its runs would refuse."""
        self.backend.validate(
            agent_request(
                RunOptions(prompt=""), session_id=None, run_id=None, model=model, permission_mode=permission_mode
            )
        )

    async def require_valkey(self, session_id: UUID) -> None:
        """503 unless the session's Valkey (on a cluster: the shard of its `{<sid>}` slot) answers."""
        try:
            await self.events.ping(events_key(session_id))
        except VALKEY_ERRORS as exc:
            raise valkey_unavailable() from exc

    # -- starting runs -------------------------------------------------------------------------------

    async def submit(
        self,
        owner_key_id: UUID,
        session_id: UUID | None,
        options: RunOptions,
        *,
        if_busy: IfBusy,
        new_session: AgentSession | None = None,
    ) -> Submitted:
        """Records the run in Postgres and starts it here when its session is free; else it waits in the
        session's queue (or, with if_busy=interrupt, the active run is interrupted so it goes next)."""
        if self.draining:
            raise shutting_down()
        if new_session is not None:
            if new_session.id is None:
                new_session.id = UUID(str(uuid7()))  # now, not at the flush: its slot says which shard must answer
            target = new_session.id
        else:
            assert session_id is not None  # one of the two, always (as in `RunStore.submit`)
            target = session_id
        await self.require_valkey(target)
        try:
            submitted = await self.store.submit(
                owner_key_id,
                session_id,
                options,
                if_busy=if_busy,
                instance_id=self.instance_id,
                new_session=new_session,
                before_commit=self._take_lease,
            )
        except VALKEY_ERRORS as exc:
            raise valkey_unavailable() from exc
        if submitted.started is not None:
            await self._launch(submitted.started)
        else:
            if submitted.interrupt is not None:
                active = submitted.session.active_run
                await self.interrupt(
                    submitted.session.id, submitted.interrupt, active.instance_id if active else self.instance_id
                )
            if submitted.session.active_run is None:
                # Queued behind a run that has just ended: nobody else may be about to start it.
                await self.start_next(submitted.session.id)
        return submitted

    async def start_next(self, session_id: UUID) -> bool:
        """Starts the session's next queued run here, if the session is free. Safe from any instance at
        any time: the session row lock lets one win."""
        if self.draining:
            return False
        try:
            started = await self.store.claim_next(session_id, self.instance_id, self._take_lease)
        except Exception:
            logger.warning("could not start the next run of %s", session_id, exc_info=True)
            return False
        if started is None:
            return False
        await self._launch(started)
        return True

    def _lease_token(self, started: StartedRun) -> bytes:
        return encode_lease(
            LeaseValue(run_id=started.run_id, instance_id=self.instance_id, started_at=started.started_at)
        )

    async def _take_lease(self, started: StartedRun) -> None:
        """Inside the start transaction: Postgres has made this run the session's active one, so any lease
        still there belongs to a run that has ended (its `done` is a moment away) or to nobody alive."""
        key = active_key(started.session_id)
        token = self._lease_token(started)
        deadline = time.monotonic() + LEASE_HANDOVER_WAIT
        while not await self.lease.acquire(key, token):
            if time.monotonic() > deadline:
                await self.lease.take(key, token)
                break
            await asyncio.sleep(0.01)

    async def _launch(self, started: StartedRun) -> None:
        session = started.session
        try:
            await self.events.reset(events_key(started.session_id))
        except VALKEY_ERRORS:
            logger.warning("run %s: could not reset the event stream", started.run_id)
        run = LiveRun(
            started,
            agent=self.backend.start(
                agent_request(
                    started.options,
                    session_id=started.session_id,
                    run_id=started.run_id,
                    model=session.model,
                    permission_mode=session.permission_mode,
                    resume=started.resume,
                    fork=started.fork,
                )
            ),
            recorder=EventRecorder(
                self.events,
                self.persister,
                session_id=started.session_id,
                run_id=started.run_id,
                stream_key=events_key(started.session_id),
            ),
            lease=self.lease,
            lease_token=self._lease_token(started),
            store=self.store,
            markers=self.markers,
            settings=self.settings.runs,
            on_end=self._on_run_end,
        )
        self.runs[started.run_id] = run
        metrics.active_runs.inc()
        # On the starting request's lines too; the run's task binds its own (it outlives the request).
        bind_log_context(session_id=started.session_id, run_id=started.run_id)
        run.start()

    async def _on_run_end(self, run: LiveRun) -> None:
        self.runs.pop(run.run_id, None)
        await self.start_next(run.session_id)

    # -- reaching a run wherever it runs -------------------------------------------------------------

    # The owner is the run's `instance_id` (Postgres has it from the run's start): the message goes to that
    # instance's control stream only.

    async def interrupt(self, session_id: UUID, run_id: UUID, instance_id: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.request_interrupt()
            return
        try:
            await self.channel.send(
                instance_id,
                control.encode(control.Interrupt(session_id=session_id, run_id=run_id)),
                marker=(interrupt_key(session_id), str(run_id), self.settings.runs.interrupt_ttl),
            )
        except VALKEY_ERRORS as exc:
            raise valkey_unavailable() from exc

    async def answer(
        self, session_id: UUID, run_id: UUID, instance_id: str, answer: str, question_id: str | None
    ) -> str:
        """ "delivered", "no_pending_question" or "not_running" (the owner did not answer in time)."""
        run = self.runs.get(run_id)
        if run is not None:
            return await run.answer(answer, question_id)
        reply_key = self.channel.reply_key(session_id)
        try:
            await self.channel.send(
                instance_id,
                control.encode(
                    control.DeliverAnswer(
                        session_id=session_id,
                        run_id=run_id,
                        answer=answer,
                        question_id=question_id,
                        reply_key=reply_key,
                    )
                ),
            )
            raw = await self.channel.wait_reply(reply_key, self.settings.runs.answer_timeout)
        except VALKEY_ERRORS as exc:
            raise valkey_unavailable() from exc
        reply = control.decode_reply(raw) if raw is not None else None
        return reply.outcome if reply is not None else "not_running"

    async def set_permission_mode(self, session_id: UUID, run_id: UUID, instance_id: str, mode: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            await run.set_permission_mode(mode)
            return
        with contextlib.suppress(*VALKEY_ERRORS):
            await self.channel.send(
                instance_id,
                control.encode(control.SetPermissionMode(session_id=session_id, run_id=run_id, permission_mode=mode)),
            )

    async def cancel_queued_of_session(self, db: AsyncSession, session_id: UUID) -> None:
        """Inside the transaction that deletes the session: its queue goes with it."""
        await self.store.cancel_queued_of_session(db, session_id)

    async def forget_events(self, session_id: UUID) -> None:
        """After the session is deleted: its live event stream goes (it expires on its own if this fails)."""
        with contextlib.suppress(*VALKEY_ERRORS):
            await self.events.delete(events_key(session_id), interrupt_key(session_id))

    async def on_control_message(self, raw: bytes) -> None:
        message = control.decode(raw)
        if message is None:
            return
        run = self.runs.get(message.run_id)
        if run is None:
            return
        with log_context(session_id=run.session_id, run_id=run.run_id):
            if isinstance(message, control.Interrupt):
                run.request_interrupt()
            elif isinstance(message, control.SetPermissionMode):
                await run.set_permission_mode(message.permission_mode)
            else:
                outcome: AnswerOutcome = await run.answer(message.answer, message.question_id)
                await self.channel.reply(message.reply_key, control.encode(control.AnswerReply(outcome=outcome)))
