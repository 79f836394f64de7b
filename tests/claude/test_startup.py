"""AGENT_BACKEND=claude fails at startup, clearly, without the extra or ANTHROPIC_API_KEY."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from app.agents.registry import BackendUnavailableError
from app.asgi import create_app
from app.config.settings import AppSettings, DatabaseSettings, Settings, ValkeySettings

pytest.importorskip("claude_agent_sdk")


def claude_settings(api_key: str) -> Settings:
    return Settings(
        app=dataclasses.replace(AppSettings(), agent_backend="claude", anthropic_api_key=api_key),
        db=dataclasses.replace(DatabaseSettings(), url="postgresql://127.0.0.1:9/none"),
        valkey=dataclasses.replace(ValkeySettings(), url="redis://127.0.0.1:9/0"),
    )


def test_missing_api_key_is_a_startup_error() -> None:
    with pytest.raises(BackendUnavailableError, match="ANTHROPIC_API_KEY"):
        create_app(claude_settings(""))


def test_missing_extra_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "claude_agent_sdk", None)  # `import claude_agent_sdk` now fails
    with pytest.raises(BackendUnavailableError, match=r"uv sync --extra claude"):
        create_app(claude_settings("sk-test"))


def test_with_key_and_extra_the_app_builds() -> None:
    app = create_app(claude_settings("sk-test"))
    assert app.state["components"].backend.name == "claude"


def test_openapi_documents_the_question_shapes() -> None:
    schema = create_app(claude_settings("sk-test")).openapi_schema.to_schema()
    answer = schema["paths"]["/api/v1/sessions/{session_id}/answer"]["post"]
    assert "permission" in answer["description"] and "ask_user_question" in answer["description"]
    query = schema["paths"]["/api/v1/query"]["post"]
    described = query["responses"]["200"]["description"]
    assert "ask_user_question" in described and '["allow", "deny"]' in described
