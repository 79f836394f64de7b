"""The OpenAPI document describes request bodies as strictly as the validators enforce them."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
import pytest
from litestar.serialization import encode_json

from app.asgi import REQUEST_BODIES, create_app
from app.config.settings import AppSettings, DatabaseSettings, Settings, ValkeySettings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = Settings(
        app=dataclasses.replace(AppSettings(), instance_id="openapi", api_key=""),
        db=dataclasses.replace(DatabaseSettings(), url="postgresql://x@127.0.0.1:1/x", migrate_on_startup=False),
        valkey=dataclasses.replace(ValkeySettings(), url="redis://127.0.0.1:1/0"),
    )
    served: dict[str, Any] = json.loads(encode_json(create_app(settings).openapi_schema.to_schema()))
    return served


@pytest.fixture(scope="module")
def components(document: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = document["components"]["schemas"]
    return schemas


@pytest.mark.parametrize(
    ("path", "method", "required"),
    [
        ("/api/v1/sessions", "post", False),  # every member optional: no body is a default session
        ("/api/v1/sessions/{session_id}/fork", "post", False),
        ("/api/v1/sessions/{session_id}", "patch", True),
        ("/api/v1/query", "post", True),
        ("/api/v1/sessions/{session_id}/answer", "post", True),
    ],
)
def test_only_optional_bodies_are_optional(document: dict[str, Any], path: str, method: str, required: bool) -> None:
    assert document["paths"][path][method]["requestBody"]["required"] is required


@pytest.mark.parametrize("struct", REQUEST_BODIES, ids=lambda s: s.__name__)
def test_request_bodies_refuse_unknown_members(components: dict[str, Any], struct: type[msgspec.Struct]) -> None:
    assert struct.__struct_config__.forbid_unknown_fields
    assert components[struct.__name__]["additionalProperties"] is False


def array_arm(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") == "array":
        return schema
    return next(arm for arm in schema.get("oneOf", schema.get("anyOf", [])) if arm.get("type") == "array")


@pytest.mark.parametrize(
    ("component", "member", "rules"),
    [
        ("SessionCreate", "tags", {"minLength": 1, "maxLength": 64}),
        ("SessionUpdate", "tags", {"minLength": 1, "maxLength": 64}),
        ("QueryRequest", "allowed_tools", {"minLength": 1, "maxLength": 200}),
        ("RunRequest", "disallowed_tools", {"minLength": 1, "maxLength": 200}),
    ],
)
def test_list_items_keep_their_constraints(
    components: dict[str, Any], component: str, member: str, rules: dict[str, Any]
) -> None:
    items = array_arm(components[component]["properties"][member])["items"]
    assert items["type"] == "string"
    assert rules.items() <= items.items(), items
    assert "pattern" in items


def test_offset_bound_is_exact_as_a_json_number() -> None:
    from app.domain.sessions.controllers import MAX_OFFSET

    assert float(MAX_OFFSET) == MAX_OFFSET
