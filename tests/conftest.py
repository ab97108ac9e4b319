"""Shared fixtures: a fake upstream on loopback, runtimes built from mesh.yaml text, in-process clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from meshgate.app import build_app
from meshgate.config import load_config
from meshgate.gateway.runtime import Runtime
from meshgate.plugins import make_plugin_manager, provider_types
from meshgate.settings import resolve_settings
from meshgate.testing.fake_openai import FakeOpenAI
from tests import broken_provider

UPSTREAM_KEY = "sk-upstream-test-key"


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(required_key=UPSTREAM_KEY) as fake:
        yield fake


def upstream_models_yaml(base_url: str) -> str:
    """mesh.yaml `models:` entries covering the fake upstream's behaviours."""
    entries = []
    for name, upstream, extra in [
        ("bench", "echo", "price: {input: 2.5, output: 10.0}"),
        ("slow", "slow:0.5", ""),
        ("paced", "paced:20:10", "price: {input: 1.0, output: 2.0}"),
        ("fail500", "fail:500", ""),
        ("fail429", "fail:429", ""),
        ("fail400", "fail:400", ""),
        ("cut", "cut:2", ""),
        ("hang", "hang", "timeout: 0.5"),
        ("badjson", "badjson", ""),
    ]:
        entries.append(
            f"""
  - name: {name}
    provider: openai-compatible
    model: "{upstream}"
    base_url: {base_url}
    api_key: ${{TEST_UPSTREAM_KEY}}
    {extra}"""
        )
    entries.append(
        f"""
  - name: remote-embed
    provider: openai-compatible
    kind: embedding
    model: echo
    base_url: {base_url}
    api_key: ${{TEST_UPSTREAM_KEY}}
    capabilities: {{embedding_dimensions: 8}}
  - name: unreachable
    provider: openai-compatible
    model: echo
    base_url: http://127.0.0.1:9/v1
    connect_timeout: 1
  - name: broken
    provider: test-broken"""
    )
    return "models:" + "".join(entries) + "\n"


def make_runtime(tmp_path: Path, yaml_text: str, **settings: Any) -> Runtime:
    os.environ.setdefault("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    path = tmp_path / "mesh.yaml"
    path.write_text(textwrap.dedent(yaml_text))
    plugins = make_plugin_manager()
    if not plugins.is_registered(broken_provider):
        plugins.register(broken_provider, name="tests.broken_provider")
    types = provider_types(plugins)
    config = load_config(path, types)
    resolved = resolve_settings({"data_dir": str(tmp_path / "data"), **settings}, config.server, str(path))
    return Runtime(resolved, config, plugins, types)


class AppClient:
    """An in-process client and the runtime behind it, authenticated with `key` when given."""

    def __init__(self, runtime: Runtime, key: str | None = None) -> None:
        self.runtime = runtime
        self.key = key
        self.app = build_app(runtime, manage_runtime=False)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://meshgate.test", timeout=60, headers=headers
        )

    @classmethod
    async def started(cls, runtime: Runtime, role: str = "admin") -> AppClient:
        """Start the runtime and, with auth on, make a key to call it with."""
        await runtime.start()
        key = None
        if runtime.control is not None and runtime.settings.auth:
            key = (await runtime.control.create_key("tests", role=role)).key
            assert runtime.keys is not None
            await runtime.keys.reload()
        return cls(runtime, key)


@pytest.fixture(scope="session")
async def proxy_client(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI) -> AsyncIterator[AppClient]:
    """meshgate in front of the fake upstream (no local models), started once for the session."""
    runtime = make_runtime(
        tmp_path_factory.mktemp("proxy"),
        upstream_models_yaml(fake_upstream.base_url),
        max_body_bytes=64 * 1024,
    )
    client = await AppClient.started(runtime)
    yield client
    await client.http.aclose()
    await runtime.stop()


@contextlib.contextmanager
def served_in_thread(runtime: Runtime) -> Iterator[str]:
    """The app served by uvicorn on an event loop in a thread of its own, for callers that block
    (schemathesis as a subprocess, synchronous hypothesis tests); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(runtime), host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
async def proxy_url(proxy_client: AppClient) -> AsyncIterator[str]:
    """The same app behind a real uvicorn socket, for what an in-process transport hides
    (httpx's ASGITransport collects a whole streamed body before handing it over)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(proxy_client.app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture(scope="session")
async def local_client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AppClient]:
    """meshgate on the embedded defaults: the real local chat and embedding models."""
    tmp = tmp_path_factory.mktemp("local")
    runtime = make_runtime(tmp, "server: {}\n")
    client = await AppClient.started(runtime)
    yield client
    await client.http.aclose()
    await runtime.stop()
