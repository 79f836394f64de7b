from __future__ import annotations

PREFIX = "agentapi"


def scoped_key(scope_id: object, name: str) -> str:
    """`agentapi:{<scope>}:<name>`; the braces are a cluster hash tag so one scope's keys share a slot."""
    return f"{PREFIX}:{{{scope_id}}}:{name}"


def global_key(name: str) -> str:
    return f"{PREFIX}:{name}"
