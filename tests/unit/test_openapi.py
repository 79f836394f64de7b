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


# -- issue 18 item 8: every error the API answers with is documented, with real examples -------------------

KNOWN_CODES = {
    "VALIDATION_ERROR", "UNAUTHORIZED", "SESSION_NOT_FOUND", "NOT_FOUND", "METHOD_NOT_ALLOWED", "SESSION_BUSY",
    "SESSION_LOCKED", "NOT_RUNNING", "NO_PENDING_QUESTION", "VERSION_CONFLICT", "REQUEST_TOO_LARGE",
    "URI_TOO_LONG", "RATE_LIMITED", "VALKEY_UNAVAILABLE", "DATABASE_UNAVAILABLE", "SHUTTING_DOWN",
    "INTERNAL_ERROR", "UNSUPPORTED_MEDIA_TYPE",
}  # fmt: skip


def all_examples(node: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "examples" and isinstance(value, list):
                found.extend(value)
            elif key == "examples" and isinstance(value, dict):
                found.extend(v.get("value") for v in value.values() if isinstance(v, dict))
            elif key == "example":
                found.append(value)
            else:
                found.extend(all_examples(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(all_examples(item))
    return found


def problem_examples(document: dict[str, Any]) -> list[dict[str, Any]]:
    out = [e for e in all_examples(document["components"]["schemas"]["Problem"]) if isinstance(e, dict)]
    for path_item in document["paths"].values():
        for operation in path_item.values():
            for response in operation.get("responses", {}).values():
                media = response.get("content", {}).get("application/problem+json")
                if media is not None:
                    out.extend(e for e in all_examples(media) if isinstance(e, dict))
    return out


def test_problem_examples_are_real_problems(document: dict[str, Any]) -> None:
    examples = problem_examples(document)
    assert examples
    for example in examples:
        assert 400 <= example["status"] <= 599, example
        assert example["code"] in KNOWN_CODES, example
        assert example["type"].startswith("https://agent-api.dev/problems/"), example
    # Property-level examples too: no random strings or numbers anywhere in the schema.
    props = document["components"]["schemas"]["Problem"]["properties"]
    for value in all_examples(props["status"]):
        assert 400 <= value <= 599
    for value in all_examples(props["code"]):
        assert value in KNOWN_CODES


def test_every_operation_documents_405_and_the_error_codes(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    for code in ("SHUTTING_DOWN", "METHOD_NOT_ALLOWED", "RUN_LOST", "AGENT_ERROR"):
        assert code in text, code
    for path, path_item in document["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in path_item.items():
            assert "405" in operation["responses"], (method, path)
    resume = document["paths"]["/api/v1/sessions/{session_id}/resume"]["post"]["responses"]
    assert "SHUTTING_DOWN" in resume["503"]["description"]
