"""`agent-api keys create|list|revoke`: manage API keys in the database the server uses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from advanced_alchemy.exceptions import DuplicateKeyError
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar import Litestar
from litestar.cli._utils import LitestarGroup

from app.config.settings import Settings
from app.domain.keys.services import ApiKeyService
from app.lib import migrations

T = TypeVar("T")

MAX_NAME_LENGTH = 100  # the `api_key.name` column


def validate_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A key name: 1-100 characters, not blank, no control characters (it is printed in `keys list`)."""
    if not value.strip():
        raise click.BadParameter("must not be empty or blank")
    if len(value) > MAX_NAME_LENGTH:
        raise click.BadParameter(f"must be at most {MAX_NAME_LENGTH} characters (got {len(value)})")
    if any(not ch.isprintable() for ch in value):
        raise click.BadParameter("must not contain control characters (newlines, tabs, ...)")
    return value


def _run(app: Litestar, work: Callable[[ApiKeyService], Awaitable[T]]) -> T:
    # The plugin holds a list of configs; the app keeps its one config in state.
    config = app.state["alchemy_config"]
    assert isinstance(config, SQLAlchemyAsyncConfig)
    settings = app.state["settings"]
    assert isinstance(settings, Settings)
    if settings.db.migrate_on_startup:
        # As the server would: on a brand-new database the api_key table must exist first.
        migrations.upgrade_sync(config)

    async def main() -> T:
        try:
            async with config.get_session() as db:
                return await work(ApiKeyService(session=db))
        finally:
            await config.get_engine().dispose()

    return asyncio.run(main())


# LitestarGroup injects the `app` argument into the commands (a plain click group does not).
@click.group(name="keys", cls=LitestarGroup, help="Manage API keys (stored hashed).")
def keys_group() -> None:
    pass


@click.command(name="create", help="Create a key; prints it once, alone on the last line.")
@click.option(
    "--name", required=True, callback=validate_name, help="A unique name for the key (1-100 characters, not blank)."
)
def create_key(app: Litestar, name: str) -> None:
    async def work(service: ApiKeyService) -> str:
        if await service.get_one_or_none(name=name) is not None:
            raise click.ClickException(f"a key named {name!r} already exists")
        try:
            _, plaintext = await service.create_key(name)
        except DuplicateKeyError as exc:  # created concurrently by someone else
            raise click.ClickException(f"a key named {name!r} already exists") from exc
        return plaintext

    plaintext = _run(app, work)
    click.echo(f"Created API key {name!r}. Store it now; only its hash is kept:")
    click.echo(plaintext)


@click.command(name="list", help="List keys (name, fingerprint, created, revoked).")
def list_keys(app: Litestar) -> None:
    async def work(service: ApiKeyService) -> list[tuple[str, str, str, str]]:
        rows = await service.list()
        return [
            (r.name, r.fingerprint, r.created_at.isoformat(), r.revoked_at.isoformat() if r.revoked_at else "-")
            for r in sorted(rows, key=lambda r: r.created_at)
        ]

    click.echo(f"{'NAME':<24} {'PREFIX':<14} {'CREATED':<34} REVOKED")
    for name, fingerprint, created, revoked in _run(app, work):
        click.echo(f"{name:<24} {fingerprint:<14} {created:<34} {revoked}")


@click.command(name="revoke", help="Revoke a key by name; every instance refuses it within 60 s.")
@click.argument("name")
def revoke_key(app: Litestar, name: str) -> None:
    if not _run(app, lambda service: service.revoke(name)):
        raise click.ClickException(f"no active key named {name!r}")
    click.echo(f"Revoked {name!r}.")


# Added through LitestarGroup.add_command, which wraps each callback to inject `app`.
for _command in (create_key, list_keys, revoke_key):
    keys_group.add_command(_command)  # type: ignore[arg-type]  # typed for rich-click's Command subclass
