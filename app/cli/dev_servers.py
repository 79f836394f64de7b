"""Before the CLI runs a command that needs them: start embedded servers for unset URLs, and for a
development `run` (one whose PostgreSQL this process started) make sure a key exists to call the API with."""

from __future__ import annotations

import atexit
import os
import sys

import click

from app.config.settings import get_settings
from app.domain.keys.hashing import generate_key
from app.lib.embedded_servers import EmbeddedValkey, embedded_postgres_url


def prepare_environment(command: str) -> None:
    settings = get_settings()
    data_dir = settings.app.data_dir.resolve()
    started: list[str] = []
    embedded_database = not settings.db.url
    if embedded_database:
        url, _server = embedded_postgres_url(data_dir / "postgres")
        os.environ["DATABASE_URL"] = url
        started.append(f"PostgreSQL (embedded, data in {data_dir / 'postgres'})")
    if command == "run" and not settings.valkey.url:
        valkey = EmbeddedValkey(data_dir / "valkey")
        os.environ["VALKEY_URL"] = valkey.start()
        os.environ["VALKEY_CLUSTER"] = "false"  # the embedded Valkey is one node, whatever the environment said
        atexit.register(valkey.stop)
        started.append(f"Valkey (embedded, {os.environ['VALKEY_URL']})")
    if command == "run" and not settings.api_key_is_set():
        if embedded_database:
            # A fresh development key each start; only its hash reaches the database (as the bootstrap key).
            os.environ["API_KEY"] = generate_key()
            _announce_dev_key(os.environ["API_KEY"])
        else:
            # A shared database (e.g. compose replicas): a key per process start would pile up bootstrap keys
            # nobody knows. Keys come from API_KEY or `agent-api keys create`.
            click.echo("agent-api: no API_KEY set; create keys with `agent-api keys create --name NAME`.", err=True)
    get_settings.cache_clear()
    for line in started:
        click.echo(f"agent-api: started {line}", err=True)


def cli_option(argv: list[str], names: tuple[str, ...], default: str) -> str:
    """The value of a `run` option as given on the command line (`--port 9000`, `--port=9000`, `-p 9000`)."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return default


def _announce_dev_key(key: str) -> None:
    # Where this run will listen: the command line wins over the environment, as in `litestar run`.
    host = cli_option(sys.argv[1:], ("--host", "-H"), os.environ.get("LITESTAR_HOST", "127.0.0.1"))
    port = cli_option(sys.argv[1:], ("--port", "-p"), os.environ.get("LITESTAR_PORT", "8000"))
    click.echo(
        "\n".join(
            [
                "",
                "agent-api: no API_KEY set, so this development key was made for this run:",
                f"    {key}",
                f"  Docs:  http://{host}:{port}/docs",
                f"  Try:   curl -H 'X-API-Key: {key}' http://{host}:{port}/api/v1/sessions",
                "  Set API_KEY (or create keys with `agent-api keys create --name NAME`) for a stable key.",
                "",
            ]
        ),
        err=True,
    )
