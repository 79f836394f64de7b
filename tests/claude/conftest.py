"""Fixtures for the Claude backend tests: they need the `claude` extra and skip cleanly without it."""

from __future__ import annotations

import pytest

pytest.importorskip("claude_agent_sdk")
