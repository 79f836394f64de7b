from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy import text

from app.domain.runs.manager import RunManager
from app.lib.di import AppDependency
from app.lib.valkey.client import ValkeyClients

CHECK_TIMEOUT = 2.0


class Live(msgspec.Struct):
    status: str


class Ready(msgspec.Struct):
    status: str
    checks: dict[str, dict[str, Any]]


async def _timed(check: Any) -> dict[str, Any]:
    """Runs `check`; its result (a dict, e.g. a cluster's state) or its error's details join the report."""
    started = time.perf_counter()
    try:
        details = await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure means "down" here
        extra = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        return {
            "status": "down",
            "error": type(exc).__name__,
            **extra,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    return {"status": "up", **(details or {}), "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


class HealthController(Controller):
    path = "/health"
    tags = ["Health"]
    include_in_schema = True

    # `security=[{}]`: public in the OpenAPI document too, overriding the app-wide key requirement.
    @get("/live", summary="Liveness", exclude_from_auth=True, security=[{}])
    async def live(self) -> Live:
        return Live(status="ok")

    @get(
        "/ready",
        summary="Readiness: Postgres and Valkey, startup done, not draining",
        exclude_from_auth=True,
        security=[{}],
        responses={
            503: ResponseSpec(
                data_container=Ready,
                description=(
                    "Not ready: `unavailable` (Postgres is unreachable), `starting` (the startup database work, "
                    "migrations and the bootstrap key, is still being retried) or `draining` (SIGTERM: the "
                    "instance is finishing its runs and takes no new ones)."
                ),
            )
        },
    )
    async def ready(
        self,
        alchemy_config: AppDependency[SQLAlchemyAsyncConfig],
        valkey_clients: AppDependency[ValkeyClients],
        run_manager: AppDependency[RunManager],
        startup_work: AppDependency[StartupWork],
    ) -> Response[Ready]:
        alchemy, clients, manager, startup = alchemy_config, valkey_clients, run_manager, startup_work

        async def postgres() -> None:
            async with alchemy.get_engine().connect() as conn:
                await conn.execute(text("SELECT 1"))

        async def valkey() -> dict[str, Any]:
            # On a cluster: its `cluster_state` too (down unless `ok`: some slots are not served).
            return await clients.check()

        pg, vk = await asyncio.gather(_timed(postgres), _timed(valkey))
        checks = {"postgres": pg, "valkey": vk}
        checks["startup"] = {"status": "done" if startup.done else "pending"}
        not_ready = (
            "draining"
            if manager.draining
            else "unavailable"
            if pg["status"] != "up"
            else "starting"
            if not startup.done
            else None
        )
        if not_ready is not None:
            return Response(Ready(status=not_ready, checks=checks), status_code=503, headers={"Retry-After": "2"})
        status = "ok" if vk["status"] == "up" else "degraded"
        return Response(Ready(status=status, checks=checks))


class StartupWork:
    """Whether the startup database work (migrations, the bootstrap key) is done; readiness waits for it."""

    def __init__(self) -> None:
        self.done = False
