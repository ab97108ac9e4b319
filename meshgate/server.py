"""Runs the app under uvicorn (uvloop, httptools) with a graceful shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Generator

import click
import uvicorn

from meshgate.app import build_app
from meshgate.gateway.runtime import Runtime

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
        # Everything built at startup (models, config, modules) lives until exit: moving it out of
        # the collector's view keeps full collections, and their pauses on the event loop, short.
        gc.collect()
        gc.freeze()
        if self.started:
            click.echo(banner(self.runtime), err=False)


def serve(runtime: Runtime) -> None:
    settings = runtime.settings
    app = build_app(runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        server_header=False,
        date_header=False,
    )
    _Server(config, runtime).run()
