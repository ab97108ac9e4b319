"""The plugin manager: built-in default plugins plus third-party ones from entry points.

`MESHGATE_PLUGINS` limits which entry-point plugins load (a comma-separated list of names, or
`none`); built-ins always load. `MESHGATE_TRACE_PLUGINS=1` logs every hook call.
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points

import pluggy

from meshgate import hookspecs
from meshgate.providers.base import ProviderType

log = logging.getLogger("meshgate.plugins")

DEFAULT_PLUGINS = ("meshgate.default_plugins",)


def make_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("meshgate")
    manager.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(name), name=name)
    allowed = os.environ.get("MESHGATE_PLUGINS")
    allow = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for entry in entry_points(group="meshgate"):
        if allow is not None and entry.name not in allow:
            continue
        manager.register(entry.load(), name=entry.name)
        log.info("loaded plugin %s", entry.name)
    if os.environ.get("MESHGATE_TRACE_PLUGINS"):
        manager.trace.root.setwriter(lambda message: log.info("hook: %s", message.rstrip()))
        manager.enable_tracing()
    return manager


def provider_types(manager: pluggy.PluginManager) -> dict[str, ProviderType]:
    found: dict[str, ProviderType] = {}

    def register(provider: ProviderType) -> None:
        if provider.name in found:
            raise ValueError(f"provider type {provider.name!r} is registered twice")
        found[provider.name] = provider

    manager.hook.register_providers(register=register)
    return found
