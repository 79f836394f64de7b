"""OpenTelemetry tracing (the `otel` extra): one server span per request, named by its route; off unless
configured."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.lib import tracing
from tests.helpers import wait_for
from tests.instances import Instance, InstanceFactory

pytest.importorskip("opentelemetry.sdk", reason="the `otel` extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

API = "/api/v1/sessions"


async def test_a_request_makes_a_server_span_named_by_its_route(
    instance_factory: InstanceFactory, api_key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "span_exporter", lambda: exporter)
    monkeypatch.setattr(tracing, "_provider", None)
    inst: Instance = await instance_factory("traced", app__otel_enabled=True)

    capsys.readouterr()
    async with inst.client(api_key) as c:
        sid = (await c.post(API, json={"title": "traced"})).json()["id"]
        assert (await c.get(f"{API}/{sid}", headers={"X-Request-ID": "traced-get"})).status_code == 200
        assert (await c.get("/health/live")).status_code == 200
        assert (await c.get(f"{API}/{'0' * 8}-0000-0000-0000-{'0' * 12}")).status_code == 404

    provider = tracing._provider
    assert provider is not None
    assert provider.force_flush(5_000)
    servers: list[ReadableSpan] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    by_name = {s.name: s for s in servers}

    get = [s for s in servers if s.name == "GET /api/v1/sessions/{session_id}"]
    assert len(get) == 2, sorted(by_name)
    attrs = dict(get[0].attributes or {})
    assert attrs["http.route"] == "/api/v1/sessions/{session_id}"
    statuses = sorted(
        dict(s.attributes or {}).get("http.response.status_code", dict(s.attributes or {}).get("http.status_code"))
        for s in get
    )
    assert statuses == [200, 404]
    assert "POST /api/v1/sessions" in by_name
    # Probes are not traced; raw paths (ids) never become span names.
    assert not any("/health" in s.name for s in servers)
    assert not any(sid in s.name for s in servers)
    # The request's spans share nothing with the send/receive noise: only server spans were made.
    assert all(s.kind == SpanKind.SERVER for s in exporter.get_finished_spans())

    # The access line of the traced GET names its span: logs and traces join up.
    lines: list[dict[str, Any]] = []

    async def access_line_written() -> bool:  # access lines are written in batches (app.lib.logging)
        lines.extend(json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{"))
        return any(x.get("request_id") == "traced-get" and x["event"] == "request" for x in lines)

    await wait_for(access_line_written, timeout=5, what="the access line of the traced GET")
    line = next(x for x in lines if x.get("request_id") == "traced-get" and x["event"] == "request")
    span_ids = {format(s.context.span_id, "016x"): format(s.context.trace_id, "032x") for s in get if s.context}
    assert line["span_id"] in span_ids and line["trace_id"] == span_ids[line["span_id"]], (line, span_ids)


def test_tracing_is_off_unless_configured() -> None:
    assert tracing.build_otel_plugin(enabled=False, endpoint="", instance_id="x") is None
    assert tracing.tracing_wanted(False, "http://collector:4318")
    assert tracing.tracing_wanted(True, "")


async def test_an_untraced_app_has_no_otel_plugin(shared_instance: Instance) -> None:
    with pytest.raises(KeyError):
        shared_instance.app.plugins.get("OpenTelemetryPlugin")
