"""Runs the app under uvicorn (uvloop, httptools) with a graceful shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Generator
from typing import Any

import click
import uvicorn
from starlette.applications import Starlette

from meshgate.app import build_app
from meshgate.gateway.runtime import Runtime
from meshgate.settings import SETTINGS, ServerSettings, resolve_settings

log = logging.getLogger("meshgate")


def banner(runtime: Runtime) -> str:
    settings = runtime.settings
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    lines = [f"meshgate serving on http://{host}:{settings.port}/v1"]
    for name, model in runtime.models.items():
        kind = "chat" if model.profile.chat else "embedding"
        lines.append(f"  {name:<24} {kind:<10} {model.provider}")
    lines.append(f"data dir {settings.data_dir.resolve()}; press Ctrl+C to stop")
    return "\n".join(lines)


class _Server(uvicorn.Server):
    """Prints the banner once the runtime is up and the socket listens."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # The shutdown was graceful: exit 0 instead of re-raising SIGTERM/SIGINT at the end,
            # so that supervisors see a clean stop.
            self._captured_signals.clear()

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets=sockets)
        if self.started:
            click.echo(banner(self.runtime), err=False)


def _uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": settings.access_log,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_timeout),
        "server_header": False,
        "date_header": False,
    }


def serve(runtime: Runtime) -> None:
    settings = runtime.settings
    if settings.workers > 1:
        serve_workers(runtime)
        return
    _Server(uvicorn.Config(build_app(runtime), **_uvicorn_options(settings)), runtime).run()


def serve_workers(runtime: Runtime) -> None:
    """N worker processes on one socket. Each builds its own runtime from the same settings, handed
    down as environment variables; limits and budgets are shared through Redis."""
    settings = runtime.settings
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        os.environ[setting.env] = str(value)
    if runtime.config.path != "(defaults)":
        os.environ["MESHGATE_CONFIG"] = runtime.config.path
    click.echo(banner(runtime).replace(" serving on ", f" serving with {settings.workers} workers on "))
    uvicorn.run("meshgate.server:worker_app", factory=True, workers=settings.workers, **_uvicorn_options(settings))


def worker_app() -> Starlette:
    """The app of one worker process (`uvicorn --factory`), configured from the environment."""
    from meshgate.config import load_config, with_chat_model
    from meshgate.plugins import make_plugin_manager, provider_types

    plugins = make_plugin_manager()
    types = provider_types(plugins)
    config = load_config(os.environ.get("MESHGATE_CONFIG") or None, types)
    if chat_model := os.environ.get("MESHGATE_CHAT_MODEL"):
        config = with_chat_model(config, chat_model, os.environ.get("MESHGATE_CHAT_MODEL_NAME") or "local-chat", types)
    settings = resolve_settings({}, config.server, config.path)
    return build_app(Runtime(settings, config, plugins, types))
