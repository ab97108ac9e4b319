"""The `meshgate` command line. Thin: parses options, calls the services."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from meshgate import __version__
from meshgate.cli_options import settings_options
from meshgate.config import describe_config, load_config, with_chat_model
from meshgate.errors import ConfigError
from meshgate.plugins import make_plugin_manager, provider_types
from meshgate.settings import SETTINGS, ServerSettings, resolve_settings

_plugins = make_plugin_manager()


def _load(
    config_path: str | None, cli_values: dict[str, Any], chat_model: str | None = None, chat_model_name: str = ""
) -> tuple[Any, ServerSettings]:
    types = provider_types(_plugins)
    config = load_config(config_path, types)
    if chat_model:
        config = with_chat_model(config, chat_model, chat_model_name or "local-chat", types)
    settings = resolve_settings(cli_values, config.server, config.path)
    return config, settings


def chat_model_options(func: Any) -> Any:
    """`--chat-model PATH.gguf [--chat-model-name NAME]`: any GGUF the user has, with its own template."""
    func = click.option(
        "--chat-model-name",
        default="local-chat",
        envvar="MESHGATE_CHAT_MODEL_NAME",
        show_default=True,
        help="The name clients use for --chat-model [env MESHGATE_CHAT_MODEL_NAME].",
    )(func)
    return click.option(
        "--chat-model",
        type=click.Path(exists=True, dir_okay=False, readable=True),
        default=None,
        envvar="MESHGATE_CHAT_MODEL",
        help="Serve this GGUF file (prompted by its own chat template) instead of the default local chat "
        "model, or besides the models of --config [env MESHGATE_CHAT_MODEL].",
    )(func)


def _fail(error: ConfigError) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group()
@click.version_option(__version__, prog_name="meshgate")
def cli() -> None:
    """meshgate: one self-hosted gateway for every model, with the controls an enterprise needs."""


serve_options = settings_options(*(setting.name for setting in SETTINGS))


@cli.command()
@serve_options
@chat_model_options
def serve(config_path: str | None, chat_model: str | None, chat_model_name: str, **cli_values: Any) -> None:
    """Start the gateway (default: local models, SQLite in the data dir)."""
    try:
        config, settings = _load(config_path, cli_values, chat_model, chat_model_name)
    except ConfigError as error:
        _fail(error)
        return
    _setup_logging(settings.log_level)
    from meshgate.gateway.runtime import Runtime
    from meshgate.server import serve as run_server

    if chat_model:  # worker processes (--workers) rebuild the config from the environment
        os.environ["MESHGATE_CHAT_MODEL"] = str(Path(chat_model).resolve())
        os.environ["MESHGATE_CHAT_MODEL_NAME"] = chat_model_name
    try:
        runtime = Runtime(settings, config, _plugins, provider_types(_plugins))
    except ConfigError as error:
        _fail(error)
        return
    run_server(runtime)


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@serve_options
@chat_model_options
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
def config_check(
    config_path: str | None, chat_model: str | None, chat_model_name: str, fmt: str, **cli_values: Any
) -> None:
    """Validate mesh.yaml and print the resolved configuration (secrets stay references)."""
    try:
        config, settings = _load(config_path, cli_values, chat_model, chat_model_name)
    except ConfigError as error:
        _fail(error)
        return
    described = describe_config(config, settings)
    if fmt == "json":
        click.echo(json.dumps(described, indent=2))
    else:
        click.echo(yaml.safe_dump(described, sort_keys=False).rstrip())
    click.echo(f"# ok: {len(config.models)} models", err=True)


@config_group.command("reload")
@settings_options("data_dir")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for each server.")
def config_reload(config_path: str | None, timeout: float, **cli_values: Any) -> None:
    """Make the running servers of this data dir load mesh.yaml again (as SIGHUP does).

    A file that does not validate keeps each server on its previous configuration; the reason is
    printed and the command exits non-zero."""
    from meshgate.gateway.reload_client import signal_servers

    try:
        _, settings = _load(config_path, cli_values)
    except ConfigError as error:
        _fail(error)
        return
    outcomes = signal_servers(settings.data_dir, timeout)
    if not outcomes:
        click.echo(f"error: no running meshgate server uses the data dir {settings.data_dir}", err=True)
        sys.exit(1)
    failed = False
    for pid, ok, message in outcomes:
        failed = failed or not ok
        click.echo(f"{'reloaded' if ok else 'NOT reloaded'} (pid {pid}): {message}", err=not ok)
    sys.exit(1 if failed else 0)


def _register_control() -> None:
    from meshgate.control import cli as control_cli

    control_cli.register(cli, _load)


def _register_cache() -> None:
    from meshgate.cache import cli as cache_cli

    cache_cli.register(cli, _load)


def _register_reviews() -> None:
    from meshgate.guards import reviews_cli

    reviews_cli.register(cli, _load)


def _register_knowledge() -> None:
    from meshgate.knowledge import cli as knowledge_cli

    knowledge_cli.register(cli, _load, lambda: provider_types(_plugins))


_register_control()
_register_cache()
_register_reviews()
_register_knowledge()
_plugins.hook.register_commands(cli=cli)


def main() -> None:
    cli(prog_name="meshgate", auto_envvar_prefix=None)


if __name__ == "__main__":  # pragma: no cover
    main()
