"""`agent-api`: the Litestar CLI with the app preset; starts embedded servers when no URLs are set."""

from __future__ import annotations

import os
import sys


def _command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def run_cli() -> None:
    os.environ.setdefault("LITESTAR_APP", "app.asgi:create_app")
    command = _command(sys.argv[1:])
    if command != "run":
        # Their stdout is their output (e.g. `keys create` ends with the key): log lines go to stderr.
        from app.lib.logging import log_to_stderr

        log_to_stderr()
    if command in {"run", "database", "db", "keys"}:
        from app.cli.embedded import prepare_environment

        prepare_environment(command)

    from litestar.cli.main import litestar_group

    sys.exit(litestar_group())


if __name__ == "__main__":
    run_cli()
