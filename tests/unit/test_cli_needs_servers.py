"""Which command lines start embedded servers: only those that run something needing PostgreSQL/Valkey."""

from __future__ import annotations

import pytest

from app.__main__ import needs_servers


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["-h"],
        ["run", "--help"],
        ["--app", "app.asgi:create_app", "run", "--help"],
        ["keys"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["keys", "create", "--name", "x", "-h"],
        ["database"],
        ["db", "--help"],
        ["database", "upgrade", "--help"],
        ["version"],
        ["routes"],
        ["info"],
        ["schema", "openapi"],
    ],
)
def test_help_groups_and_server_free_commands_need_no_servers(argv: list[str]) -> None:
    assert not needs_servers(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["run", "--port", "8001"],
        ["keys", "create", "--name", "me"],
        ["keys", "list"],
        ["database", "upgrade"],
        ["db", "show-current-revision"],
    ],
)
def test_commands_that_use_the_servers_need_them(argv: list[str]) -> None:
    assert needs_servers(argv)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run"], "8000"),
        (["run", "--port", "9001"], "9001"),
        (["run", "--port=9002"], "9002"),
        (["run", "-p", "9003", "--wc", "2"], "9003"),
    ],
)
def test_the_dev_key_hint_names_the_port_given_on_the_command_line(argv: list[str], expected: str) -> None:
    from app.cli.dev_servers import cli_option

    assert cli_option(argv, ("--port", "-p"), "8000") == expected
