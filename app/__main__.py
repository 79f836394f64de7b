"""`agent-api`: the Litestar CLI with the app preset; starts embedded servers when no URLs are set."""

from __future__ import annotations

import math
import os
import sys

HELP_FLAGS = frozenset({"--help", "-h"})
# Commands that talk to PostgreSQL (and `run`, to Valkey too); the groups among them only with a subcommand.
SERVER_COMMANDS = frozenset({"run", "database", "db", "keys"})
SERVER_GROUPS = frozenset({"database", "db", "keys"})


def _command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def needs_servers(argv: list[str]) -> bool:
    """Whether the command line runs something that needs PostgreSQL/Valkey: not `--help` anywhere, not a
    group without its subcommand (which only prints the group's help), not `version`, `routes`, ..."""
    command = _command(argv)
    if command not in SERVER_COMMANDS or HELP_FLAGS.intersection(argv):
        return False
    if command in SERVER_GROUPS:
        rest = argv[argv.index(command) + 1 :]
        return _command(rest) is not None
    return True


def worker_kill_timeout() -> int:
    """Seconds Granian waits for a stopping worker before killing it: the runs' shutdown grace
    (`RUN_SHUTDOWN_GRACE`) plus time to interrupt them and end their streams (litestar-granian's default, 5 s,
    would kill workers in the middle of draining)."""
    from dotenv import load_dotenv

    from app.config.settings import RunSettings

    load_dotenv(override=False)
    # Not `get_settings()`: it is cached, and the embedded servers' URLs are not in the environment yet.
    return math.ceil(max(RunSettings().shutdown_grace, 0.0)) + 20


def run_cli() -> None:
    os.environ.setdefault("LITESTAR_APP", "app.asgi:create_app")
    command = _command(sys.argv[1:])
    if command != "run":
        # Their stdout is their output (e.g. `keys create` ends with the key): log lines go to stderr.
        from app.lib.logging import log_to_stderr

        log_to_stderr()
    if command == "run" and needs_servers(sys.argv[1:]):
        os.environ.setdefault("GRANIAN_WORKERS_KILL_TIMEOUT", str(worker_kill_timeout()))
    if needs_servers(sys.argv[1:]):
        from app.cli.dev_servers import prepare_environment

        prepare_environment(command or "")

    from litestar.cli.main import litestar_group

    sys.exit(litestar_group())


if __name__ == "__main__":
    run_cli()
