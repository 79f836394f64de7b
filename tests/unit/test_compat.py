"""The patches of upstream internals refuse an untested upstream version at startup (app/lib/compat)."""

from __future__ import annotations

import logging

import pytest

from app.lib import compat


def test_installed_versions_are_the_tested_ones() -> None:
    for package in compat.TESTED:
        compat.require_tested(package, "test")


def test_an_untested_version_refuses_to_start_and_names_the_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(compat.TESTED, "litestar", ((1, 0), (2, 0)))  # the installed 2.x is now "untested"
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(compat.UntestedUpstreamError, match=r"app\.lib\.compat\.litestar_options.*litestar>=1\.0,<2\.0"):
        compat.require_tested("litestar", "app.lib.compat.litestar_options")


def test_the_override_turns_the_refusal_into_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(compat.TESTED, "granian", ((9, 0), (10, 0)))
    monkeypatch.setenv(compat.ALLOW_UNTESTED_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="app.lib.compat"):
        compat.require_tested("granian", "app.lib.compat.granian_signals")
    assert "granian>=9.0,<10.0" in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.8.7", (2, 8, 7)), ("1.12.0rc1", (1, 12, 0)), ("2.25", (2, 25)), ("3.0.0.dev2", (3, 0, 0))],
)
def test_release_reads_the_numeric_part(text: str, expected: tuple[int, ...]) -> None:
    assert compat.release(text) == expected
