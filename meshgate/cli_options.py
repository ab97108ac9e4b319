"""Command-line options made from the settings registry, shared by every `meshgate` command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from meshgate.settings import SETTINGS_BY_NAME

F = TypeVar("F", bound=Callable[..., Any])


def setting_option(name: str) -> Callable[[F], F]:
    setting = SETTINGS_BY_NAME[name]
    kwargs: dict[str, Any] = {
        "default": None,
        "help": f"{setting.help} [env {setting.env}; default {setting.default!r}]",
    }
    if setting.type is bool:
        return click.option(f"{setting.flag}/--no-{setting.flag[2:]}", name, **kwargs)
    return click.option(setting.flag, name, type=setting.type, **kwargs)


def config_option(func: F) -> F:
    return click.option(
        "--config",
        "-c",
        "config_path",
        default=None,
        envvar="MESHGATE_CONFIG",
        help="mesh.yaml to load [env MESHGATE_CONFIG; default: the embedded local models].",
    )(func)


def settings_options(*names: str) -> Callable[[F], F]:
    """`--config` plus the options of the named settings."""

    def decorate(func: F) -> F:
        for name in reversed(names):
            func = setting_option(name)(func)
        return config_option(func)

    return decorate
