"""Makes the generated OpenAPI document say exactly what the request validators accept.

Litestar's schema for a msgspec request body leaves out two rules msgspec enforces: a struct declared with
`forbid_unknown_fields` refuses unknown members (so the schema says `additionalProperties: false`), and the
constraints on a list's items (a tag's 1-64 characters, a tool rule's pattern) are dropped. And it marks every
request body required, even an optional one (`data: Body | None = None`, where no body means None). Client generators
and fuzzers read the document, so it should say what the server does. The rules are taken from msgspec's own
JSON schema of each struct, so they cannot drift from what is enforced."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import OpenAPI, Operation, Reference, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType

_ITEM_CONSTRAINTS = {"minLength": "min_length", "maxLength": "max_length", "pattern": "pattern"}


def _array_of(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The array arm of a msgspec property schema (`list[...]` or `list[...] | None`)."""
    if schema.get("type") == "array":
        return schema
    for arm in schema.get("anyOf", ()):
        if isinstance(arm, dict) and arm.get("type") == "array":
            return arm
    return None


def _litestar_array_of(schema: Schema | Reference) -> Schema | None:
    if not isinstance(schema, Schema):
        return None
    if schema.items is not None:
        return schema
    for arm in [*(schema.one_of or ()), *(schema.any_of or ())]:
        if isinstance(arm, Schema) and arm.items is not None:
            return arm
    return None


def tighten(openapi: OpenAPI, structs: Iterable[type[msgspec.Struct]]) -> OpenAPI:
    """Adds `additionalProperties: false` and list item constraints to the components of `structs`."""
    components = openapi.components.schemas or {}
    for struct in structs:
        component = components.get(struct.__name__)
        if component is None:
            continue
        if struct.__struct_config__.forbid_unknown_fields:
            component.additional_properties = False
        _, definitions = msgspec.json.schema_components([struct])
        for name, rules in definitions[struct.__name__].get("properties", {}).items():
            source = _array_of(rules)
            target = _litestar_array_of((component.properties or {}).get(name, Schema()))
            if source is None or target is None or not isinstance(target.items, Schema):
                continue
            for json_name, attribute in _ITEM_CONSTRAINTS.items():
                if json_name in source.get("items", {}):
                    setattr(target.items, attribute, source["items"][json_name])
    return openapi


def _accepts_null(schema: Schema | Reference | None) -> bool:
    if not isinstance(schema, Schema):
        return False
    return any(isinstance(arm, Schema) and arm.type == OpenAPIType.NULL for arm in schema.one_of or ())


def mark_optional_bodies(openapi: OpenAPI) -> OpenAPI:
    """A body that may be `null` may also be left out (Litestar passes None either way): not required."""
    for path_item in (openapi.paths or {}).values():
        for method in ("post", "put", "patch", "delete"):
            operation: Operation | None = getattr(path_item, method, None)
            body = operation.request_body if operation is not None else None
            if isinstance(body, RequestBody) and all(
                _accepts_null(media.schema) for media in (body.content or {}).values()
            ):
                body.required = False
    return openapi


_PROBLEM_MEMBERS = {
    "type": "A URI naming the problem type: `https://agent-api.dev/problems/<code, kebab-case>`.",
    "title": "A short, human-readable summary of the problem type.",
    "status": "The HTTP status code of the response.",
    "code": "Machine-readable error code (see the table in the API description), e.g. `SESSION_NOT_FOUND`.",
    "detail": "What went wrong with this request.",
    "instance": "The request path.",
    "errors": "Validation errors, one object per problem (422).",
}


def document_problems(openapi: OpenAPI) -> OpenAPI:
    """The `Problem` component with real examples and member descriptions."""
    from app.lib.problems import example_problem

    component = (openapi.components.schemas or {}).get("Problem")
    if component is None:
        return openapi
    component.description = "An RFC 9457 problem: the body of every error response."
    component.examples = [example_problem(404), example_problem(422)]
    for name, description in _PROBLEM_MEMBERS.items():
        member = (component.properties or {}).get(name)
        if isinstance(member, Schema):
            member.description = description
            member.examples = None
    return openapi


def tighten_app_schema(app: Litestar, structs: Iterable[type[msgspec.Struct]]) -> None:
    """Builds the app's OpenAPI document now (Litestar caches it) and tightens it in place; call it once all
    routes are registered."""
    document_problems(mark_optional_bodies(tighten(app.openapi_schema, structs)))
