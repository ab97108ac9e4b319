"""`meshgate cache purge`: erase cached answers on whichever backend the config and settings select."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import click

from meshgate.cache.config import CacheConfig, parse_duration
from meshgate.cache.service import ResponseCache, backend_for
from meshgate.cli_options import settings_options
from meshgate.errors import ConfigError
from meshgate.settings import ServerSettings

Load = Callable[[str | None, dict[str, Any]], tuple[Any, ServerSettings]]


def register(cli: click.Group, load: Load) -> None:
    @cli.group("cache")
    def cache_group() -> None:
        """The response cache."""

    @cache_group.command("purge")
    @settings_options("data_dir", "redis_url")
    @click.option("--team", default=None, help="Only the entries of this team.")
    @click.option("--model", default=None, help="Only the entries of this model (the name clients use).")
    @click.option("--key", "key_id", default=None, help="Only the entries stored by this key (its id).")
    @click.option("--older-than", default=None, help="Only entries older than this (90s, 30m, 12h, 30d).")
    def purge(
        config_path: str | None,
        team: str | None,
        model: str | None,
        key_id: str | None,
        older_than: str | None,
        **cli_values: Any,
    ) -> None:
        """Remove cached answers (all of them without a filter); prints how many were removed."""
        try:
            age = None if older_than is None else parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
        try:
            config, settings = load(config_path, cli_values)
            default: CacheConfig = config.cache
            backend = backend_for(default, settings.data_dir, settings.redis_url)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None
        if backend.name == "memory":
            click.echo("0 entries removed (the in-process cache lives in the server: a restart empties it)")
            return

        async def main() -> int:
            cache = ResponseCache(backend)
            try:
                return await cache.purge(team=team, model=model, older_than=age, key=key_id)
            finally:
                await cache.close()

        removed = asyncio.run(main())
        click.echo(f"{removed} {'entry' if removed == 1 else 'entries'} removed ({backend.name})")
