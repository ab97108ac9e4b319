"""What the loopback fakes of upstream APIs share: a real aiohttp server on a background thread.

A fake subclasses `FakeServer`, names its thread and builds its app from `self.state`, whose
`requests` record what the fake was sent (each fake records its own `Recorded` shape).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


@dataclass
class FakeState:
    requests: list[Any] = field(default_factory=list)
    required_key: str | None = None


class FakeServer:
    """The fake served from a background thread: `with Fake() as fake: fake.base_url`."""

    #: The name of the serving thread.
    thread_name = "fake"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, required_key: str | None = None) -> None:
        self.host, self.port = host, port
        self.state = FakeState(required_key=required_key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def build_app(self) -> web.Application:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[Any]:
        return self.state.requests

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port)
        loop.run_until_complete(site.start())
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
