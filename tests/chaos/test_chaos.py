"""Chaos: mixed load from several clients on two real Granian instances while Valkey is killed and restarted
twice, Postgres is restarted once and one instance is killed with SIGKILL.

Afterwards: every acknowledged write (201 create, 200 patch) is in Postgres, no session is stuck `running`,
session reads returned no 5xx while Valkey was down, and nothing answered a 5xx other than 503 with a
documented code. Counts (operations, errors by kind, recovery times) are printed and written to
test-artifacts/chaos.json.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import iter_sse, wait_for
from tests.instances import create_api_key
from tests.processes import GranianProcess
from tests.servers import TestServers

pytestmark = [pytest.mark.chaos, pytest.mark.faults, pytest.mark.processes]

API = "/api/v1/sessions"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
INSTANCE_ENV = {
    "RUN_LEASE_TTL_MS": "2000",
    "RUN_LEASE_RENEW_INTERVAL": "0.5",
    "RUN_REAPER_INTERVAL": "0.3",
    "RATE_LIMIT_PER_MINUTE": "0",
    "SSE_PING_INTERVAL": "2",
}
OUTAGE = 3.0  # seconds each server stays down
TIMEOUT = httpx.Timeout(15.0, connect=2.0)


@pytest.fixture(autouse=True)
def _require_fault_injection(servers: TestServers) -> None:
    if not servers.can_inject_faults:
        pytest.skip("needs the embedded servers (TEST_DATABASE_URL / TEST_VALKEY_URL point at external ones)")


@dataclass
class Chaos:
    """What the load saw: every outcome by kind and phase, and the writes the API acknowledged."""

    phase: str = "steady"
    stop: bool = False
    operations: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)  # 5xx other than a documented 503, reads failing without Valkey
    created: dict[str, str] = field(default_factory=dict)  # session id -> acknowledged title
    patched: dict[str, int] = field(default_factory=dict)  # session id -> highest acknowledged metadata n
    attempted: dict[str, int] = field(default_factory=dict)  # session id -> highest attempted metadata n
    run_ends: Counter[str] = field(default_factory=Counter)
    recovery_s: dict[str, float] = field(default_factory=dict)
    interrupt_ms: dict[str, list[float]] = field(default_factory=dict)  # phase -> interrupt B -> done on A
    instances: list[str] = field(default_factory=list)
    enqueued: dict[str, set[str]] = field(default_factory=dict)  # Idempotency-Key -> run ids it answered with
    enqueue_sessions: set[str] = field(default_factory=set)

    def record(self, op: str, outcome: str, detail: str = "") -> None:
        self.operations[op] += 1
        self.outcomes[f"{op} {outcome}"] += 1
        status = outcome.split()[0]
        if status.isdigit() and int(status) >= 500 and not outcome.startswith("503 "):
            self.bad.append(f"[{self.phase}] {op} {outcome} {detail[:300]}")
        if op == "read" and self.phase.startswith("valkey down") and (status.isdigit() and int(status) >= 500):
            self.bad.append(f"[{self.phase}] read {outcome} while only Valkey was down {detail[:300]}")

    def client(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT)

    def base(self) -> str:
        return random.choice(self.instances)


def outcome_of(resp: httpx.Response) -> str:
    if resp.status_code < 400:
        return str(resp.status_code)
    try:
        code = resp.json().get("code", "?")
    except ValueError:
        code = "not-json"
    return f"{resp.status_code} {code}"


async def guarded(chaos: Chaos, op: str, call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response | None:
    try:
        resp = await call()
    except httpx.TransportError as exc:
        chaos.record(op, f"transport {type(exc).__name__}")
        return None
    chaos.record(op, outcome_of(resp), resp.text)
    return resp


async def writer(chaos: Chaos, key: str, n: int) -> None:
    """Creates sessions and patches its own sessions with an increasing counter, one request at a time."""
    async with chaos.client(key) as client:
        own: list[str] = []
        counter = 0
        while not chaos.stop:
            if not own or counter % 5 == 0:
                title = f"w{n}-{counter}"
                resp = await guarded(
                    chaos, "create", lambda title=title: client.post(chaos.base() + API, json={"title": title})
                )
                if resp is not None and resp.status_code == 201:
                    sid = resp.json()["id"]
                    chaos.created[sid] = title
                    own.append(sid)
            counter += 1
            if own:
                sid = random.choice(own)
                value = chaos.attempted.get(sid, 0) + 1
                chaos.attempted[sid] = value
                resp = await guarded(
                    chaos,
                    "patch",
                    lambda sid=sid, value=value: client.patch(
                        f"{chaos.base()}{API}/{sid}", json={"metadata": {"n": value}}
                    ),
                )
                if resp is not None and resp.status_code == 200:
                    assert resp.json()["metadata"] == {"n": value}
                    chaos.patched[sid] = max(chaos.patched.get(sid, 0), value)
            await asyncio.sleep(0.01)


async def reader(chaos: Chaos, key: str) -> None:
    async with chaos.client(key) as client:
        while not chaos.stop:
            if chaos.created:
                sid = random.choice(list(chaos.created))
                await guarded(chaos, "read", lambda sid=sid: client.get(f"{chaos.base()}{API}/{sid}"))
            if random.random() < 0.2:
                await guarded(chaos, "list", lambda: client.get(chaos.base() + API, params={"limit": 5}))
            await asyncio.sleep(0.01)


async def runner(chaos: Chaos, key: str, prompt: str) -> None:
    """Runs the agent on its own session, following each stream to `done` (or to the stream breaking)."""
    async with chaos.client(key) as client:
        sid: str | None = None
        while not chaos.stop:
            if sid is None:
                resp = await guarded(chaos, "create", lambda: client.post(chaos.base() + API, json={"title": "runner"}))
                if resp is None or resp.status_code != 201:
                    await asyncio.sleep(0.1)
                    continue
                sid = resp.json()["id"]
                chaos.created[sid] = "runner"
            try:
                async with client.stream("POST", f"{chaos.base()}{API}/{sid}/resume", json={"prompt": prompt}) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        chaos.record("run", outcome_of(resp), resp.text)
                        await asyncio.sleep(0.1)
                        continue
                    end = "no done"
                    async for ev in iter_sse(resp):
                        if ev.event == "error":
                            chaos.run_ends[f"error {ev.data.get('code')}"] += 1
                        if ev.event == "done":
                            end = f"done {ev.data['reason']}"
                            break
                    chaos.record("run", "200")
                    chaos.run_ends[end if end != "no done" else f"no done ({chaos.phase})"] += 1
            except httpx.TransportError as exc:
                chaos.record("run", f"transport {type(exc).__name__}")
                chaos.run_ends[f"stream broken ({chaos.phase})"] += 1
            await asyncio.sleep(0.02)


async def enqueuer(chaos: Chaos, key: str) -> None:
    """Queues background runs (if_busy=enqueue) on one session, each with an Idempotency-Key, and retries the
    very same request through every fault until it is accepted: one key must always mean one run."""
    async with chaos.client(key) as client:
        sid: str | None = None
        n = 0
        while not chaos.stop:
            if sid is None:
                resp = await guarded(chaos, "create", lambda: client.post(chaos.base() + API, json={"title": "queue"}))
                if resp is None or resp.status_code != 201:
                    await asyncio.sleep(0.1)
                    continue
                sid = resp.json()["id"]
                chaos.created[sid] = "queue"
                chaos.enqueue_sessions.add(sid)
            n += 1
            idem = f"chaos-{sid}-{n}"
            body = {"prompt": random.choice(["sleep 0.3", "hello queue"]), "if_busy": "enqueue"}
            for _attempt in range(200):
                resp = await guarded(
                    chaos,
                    "enqueue",
                    lambda sid=sid, body=body, idem=idem: client.post(
                        f"{chaos.base()}{API}/{sid}/runs", json=body, headers={"Idempotency-Key": idem}
                    ),
                )
                if resp is not None and resp.status_code == 202:
                    chaos.enqueued.setdefault(idem, set()).add(resp.json()["id"])
                    break
                if resp is not None and resp.status_code == 409 and resp.json().get("code") == "QUEUE_FULL":
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)


async def interrupter(chaos: Chaos, key: str) -> None:
    """Starts a long run on one instance and interrupts it from the other: how long until `done`."""
    async with chaos.client(key) as client:
        sid: str | None = None
        while not chaos.stop:
            if len(chaos.instances) < 2:
                return  # one instance left: nothing "across instances" to measure
            owner, other = random.sample(chaos.instances, 2)
            if sid is None:
                resp = await guarded(
                    chaos, "create", lambda owner=owner: client.post(owner + API, json={"title": "interrupter"})
                )
                if resp is None or resp.status_code != 201:
                    await asyncio.sleep(0.1)
                    continue
                sid = resp.json()["id"]
                chaos.created[sid] = "interrupter"
            try:
                async with client.stream("POST", f"{owner}{API}/{sid}/resume", json={"prompt": "sleep 5"}) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        chaos.record("run", outcome_of(resp), resp.text)
                        await asyncio.sleep(0.1)
                        continue
                    chaos.record("run", "200")
                    sent = 0.0
                    end = "no done"
                    async for ev in iter_sse(resp):
                        if ev.event == "message" and not sent:
                            sent = time.monotonic()
                            await guarded(
                                chaos,
                                "interrupt",
                                lambda other=other, sid=sid: client.post(f"{other}{API}/{sid}/interrupt"),
                            )
                        if ev.event == "done":
                            end = f"done {ev.data['reason']}"
                            if ev.data["reason"] == "interrupted":
                                chaos.interrupt_ms.setdefault(chaos.phase, []).append(
                                    round((time.monotonic() - sent) * 1000, 1)
                                )
                            break
                    chaos.run_ends[end if end != "no done" else f"no done ({chaos.phase})"] += 1
            except httpx.TransportError as exc:
                chaos.record("run", f"transport {type(exc).__name__}")
                chaos.run_ends[f"stream broken ({chaos.phase})"] += 1


async def ready(base: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as anon:
            resp = await anon.get(f"{base}/health/ready")
        return resp.status_code == 200 and resp.json()["status"] == "ok"
    except httpx.TransportError:
        return False


async def until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> float:
    """Seconds until `probe` holds (polled every 50 ms); fails the test at the deadline."""
    started = time.monotonic()
    await wait_for(probe, timeout=timeout, interval=0.05, what=what)
    return round(time.monotonic() - started, 3)


async def run_works(key: str, base: str) -> bool:
    async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT) as client:
        try:
            resp = await client.post(f"{base}/api/v1/query/single", json={"prompt": "probe"})
        except httpx.TransportError:
            return False
        return resp.status_code == 200 and not resp.json()["is_error"]


async def create_works(key: str, base: str) -> bool:
    async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT) as client:
        try:
            return (await client.post(base + API, json={"title": "probe"})).status_code == 201
        except httpx.TransportError:
            return False


async def refused_runs(chaos: Chaos, key: str, seconds: float) -> None:
    """While Valkey is down, new runs on either instance are refused with 503 VALKEY_UNAVAILABLE + Retry-After
    (no split brain); the load's own runners are meanwhile waiting out the outage inside their streams."""
    deadline = time.monotonic() + seconds
    async with chaos.client(key) as client:
        while time.monotonic() < deadline:
            resp = await guarded(
                chaos,
                "run while Valkey is down",
                lambda: client.post(chaos.base() + "/api/v1/query", json={"prompt": "x"}),
            )
            if resp is not None and not (
                resp.status_code == 503
                and resp.json()["code"] == "VALKEY_UNAVAILABLE"
                and resp.headers.get("retry-after", "").isdigit()
            ):
                chaos.bad.append(f"[{chaos.phase}] run not refused: {resp.status_code} {resp.text[:200]}")
            await asyncio.sleep(0.05)


async def test_chaos(servers: TestServers, tmp_path: Path) -> None:
    key = await create_api_key(servers)
    probe_key = await create_api_key(servers)
    a = await asyncio.to_thread(GranianProcess.start, servers, "chaos-a", tmp_path, **INSTANCE_ENV)
    b = await asyncio.to_thread(GranianProcess.start, servers, "chaos-b", tmp_path, **INSTANCE_ENV)
    chaos = Chaos(instances=[a.base_url, b.base_url])
    started = time.monotonic()
    load: list[asyncio.Task[None]] = []
    try:
        load = [
            *(asyncio.create_task(writer(chaos, key, n)) for n in range(3)),
            *(asyncio.create_task(reader(chaos, key)) for _ in range(2)),
            asyncio.create_task(runner(chaos, key, "chaos says hello to everyone")),
            asyncio.create_task(runner(chaos, key, "sleep 0.5")),
            asyncio.create_task(runner(chaos, key, "sleep 0.5")),
            asyncio.create_task(interrupter(chaos, key)),
            asyncio.create_task(enqueuer(chaos, key)),
        ]
        await asyncio.sleep(2)  # steady load before the first fault

        for round_ in (1, 2):
            chaos.phase = f"valkey down {round_}"
            await asyncio.to_thread(servers.stop_valkey)
            await refused_runs(chaos, probe_key, OUTAGE)
            await asyncio.to_thread(servers.start_valkey)
            chaos.phase = f"valkey back {round_}"
            back = time.monotonic()
            for inst in (a, b):
                await until(lambda inst=inst: ready(inst.base_url), f"{inst.instance_id} ready")  # type: ignore[misc]
                await until(lambda inst=inst: run_works(probe_key, inst.base_url), f"runs on {inst.instance_id}")  # type: ignore[misc]
            chaos.recovery_s[f"valkey restart {round_}: runs work on both instances"] = round(
                time.monotonic() - back, 3
            )
            await asyncio.sleep(1.5)

        chaos.phase = "postgres down"
        await asyncio.to_thread(servers.stop_postgres)
        await asyncio.sleep(OUTAGE)
        await asyncio.to_thread(servers.start_postgres)
        chaos.phase = "postgres back"
        back = time.monotonic()
        for inst in (a, b):
            await until(lambda inst=inst: create_works(probe_key, inst.base_url), f"creates on {inst.instance_id}")  # type: ignore[misc]
        chaos.recovery_s["postgres restart: creates work on both instances"] = round(time.monotonic() - back, 3)
        await asyncio.sleep(1.5)

        # A long run in flight on b when it dies, so there is a lost run to reap.
        doomed_sid = ""
        async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT) as client:
            doomed_sid = (await client.post(b.base_url + API, json={"title": "doomed"})).json()["id"]
            chaos.created[doomed_sid] = "doomed"
            async with client.stream(
                "POST", f"{b.base_url}{API}/{doomed_sid}/resume", json={"prompt": "sleep 30"}
            ) as resp:
                async for ev in iter_sse(resp):
                    if ev.event == "message":
                        break
                chaos.phase = "instance killed"
                chaos.instances = [a.base_url]  # the load balancer takes b out
                killed = time.monotonic()
                await asyncio.to_thread(b.kill)

        async def nothing_running_on_b() -> bool:
            async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT) as client:
                page = (await client.get(a.base_url + API, params={"status": "running", "limit": 100})).json()
                doomed = (await client.get(f"{a.base_url}{API}/{doomed_sid}")).json()
            on_b = [s for s in page["items"] if s["active_run"] and s["active_run"]["instance_id"] == "chaos-b"]
            return not on_b and doomed["status"] == "error"

        chaos.recovery_s["SIGKILL: runs of the dead instance reaped"] = await until(
            nothing_running_on_b, "the dead instance's runs reaped"
        )
        chaos.recovery_s["SIGKILL: since the kill"] = round(time.monotonic() - killed, 3)
        await asyncio.sleep(2)
        chaos.phase = "stopping"
    finally:
        chaos.stop = True
        results = await asyncio.gather(*load, return_exceptions=True)
        b.kill()

    try:
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors

        # No session stuck running (leases are 2 s here; the reaper on a closes lost runs).
        async def none_running() -> bool:
            async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT) as client:
                page = (await client.get(a.base_url + API, params={"status": "running"})).json()
            return page["total"] == 0

        chaos.recovery_s["after the load: no session running"] = await until(none_running, "no session running")

        # Every Idempotency-Key answered with one run; every accepted run ended, and ran at most once.
        twice = {k: v for k, v in chaos.enqueued.items() if len(v) != 1}
        assert not twice, twice
        accepted = {next(iter(v)) for v in chaos.enqueued.values()}

        async def queues_drained() -> bool:
            async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT) as client:
                for sid in chaos.enqueue_sessions:
                    page = (await client.get(f"{a.base_url}{API}/{sid}/runs", params={"limit": 100})).json()
                    if any(r["status"] in ("queued", "running") for r in page["items"]):
                        return False
            return True

        chaos.recovery_s["after the load: every queue drained"] = await until(queues_drained, "queues drained", 90)
        async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT) as client:
            seen_runs: dict[str, str] = {}
            for sid in chaos.enqueue_sessions:
                offset = 0
                while True:
                    page = (
                        await client.get(f"{a.base_url}{API}/{sid}/runs", params={"limit": 100, "offset": offset})
                    ).json()
                    seen_runs.update({r["id"]: r["status"] for r in page["items"]})
                    offset += 100
                    if offset >= page["total"]:
                        break
                events = (await client.get(f"{a.base_url}{API}/{sid}/messages", params={"limit": 1000})).json()["items"]
                dones = Counter(m["run_id"] for m in events if m["event"] == "done")
                assert all(c == 1 for c in dones.values()), dones
        missing = accepted - set(seen_runs)
        assert not missing, missing
        chaos.run_ends.update(f"enqueued {status}" for rid, status in seen_runs.items() if rid in accepted)

        # Every acknowledged write is in Postgres: read past the cache by flushing it first.
        await servers_flush_valkey(servers)
        lost: list[str] = []
        async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=TIMEOUT) as client:
            for sid, title in chaos.created.items():
                got = await client.get(f"{a.base_url}{API}/{sid}")
                if got.status_code != 200:
                    lost.append(f"create {sid}: {got.status_code}")
                    continue
                session = got.json()
                if session["title"] != title:
                    lost.append(f"create {sid}: title {session['title']!r} != {title!r}")
                acked = chaos.patched.get(sid)
                if acked is not None:
                    n = session["metadata"].get("n", 0)
                    # At least the last acknowledged value; a later one only if it was attempted (ambiguous).
                    if not acked <= n <= chaos.attempted[sid]:
                        lost.append(f"patch {sid}: n={n}, acknowledged {acked}, attempted {chaos.attempted[sid]}")
                if session["status"] == "running":
                    lost.append(f"{sid} still running")
    finally:
        a.kill()
        report = {
            "seconds": round(time.monotonic() - started, 1),
            "operations": dict(sorted(chaos.operations.items())),
            "operations_total": sum(chaos.operations.values()),
            "outcomes": dict(sorted(chaos.outcomes.items())),
            "run_ends": dict(sorted(chaos.run_ends.items())),
            "acknowledged_creates": len(chaos.created),
            "acknowledged_patches_sessions": len(chaos.patched),
            "recovery_s": chaos.recovery_s,
            "interrupt_across_instances_ms": {
                phase: {"n": len(v), "max": max(v), "median": sorted(v)[len(v) // 2]}
                for phase, v in chaos.interrupt_ms.items()
            },
            "violations": chaos.bad,
        }
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)

    assert not lost, lost
    assert not chaos.bad, chaos.bad
    # Every stream ends with `done`, whatever failed meanwhile; only the killed instance's streams break.
    unfinished = {k: v for k, v in chaos.run_ends.items() if k.startswith("no done")}
    broken = {k: v for k, v in chaos.run_ends.items() if k.startswith("stream broken") and "instance killed" not in k}
    assert not unfinished, unfinished
    assert not broken, broken
    assert chaos.operations["read"] > 0
    assert chaos.run_ends["done completed"] > 0
    assert chaos.run_ends["done interrupted"] > 0


async def servers_flush_valkey(servers: TestServers) -> None:
    from valkey.asyncio import Valkey

    client = Valkey.from_url(servers.valkey_url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def print_report(report: dict[str, Any]) -> None:
    print(f"\nchaos: {report['operations_total']} operations in {report['seconds']} s")
    for name in ("operations", "outcomes", "run_ends", "recovery_s", "interrupt_across_instances_ms"):
        print(f"  {name}:")
        for k, v in report[name].items():
            print(f"    {k:<60} {v}")
    print(
        f"  acknowledged creates: {report['acknowledged_creates']}, patched sessions: "
        f"{report['acknowledged_patches_sessions']}, violations: {len(report['violations'])}"
    )
    for line in report["violations"][:20]:
        print(f"    ! {line}")
