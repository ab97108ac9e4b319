"""api/sse.py writes stream chunks to uvicorn's httptools transport itself (`_chunked_uvicorn_cycle`).

That leans on uvicorn internals: the response cycle behind `send` and its `chunked_encoding`,
`transport`, `flow` and `disconnected`. If a uvicorn release changes them, the writer would quietly
fall back to the slow path; these tests fail instead, and pyproject.toml pins uvicorn to the minor
release they pass on.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import tomllib
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from packaging.requirements import Requirement

from meshgate.api import sse
from tests.conftest import AppClient, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_uvicorn_is_pinned_to_the_minor_release_these_tests_pass_on() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [Requirement(d) for d in deps if Requirement(d).name == "uvicorn"]
    installed = version("uvicorn")
    assert requirement.specifier.contains(installed), f"uvicorn {installed} is outside {requirement.specifier}"
    assert any(spec.operator == "<" for spec in requirement.specifier), "uvicorn needs an upper bound"
    major, minor = (int(x) for x in installed.split(".")[:2])
    assert not requirement.specifier.contains(f"{major}.{minor + 1}.0"), "the pin allows the next minor release"


def test_the_uvicorn_internals_the_stream_writer_uses_exist() -> None:
    from uvicorn.protocols.http import flow_control, httptools_impl

    cycle = httptools_impl.RequestResponseCycle
    assert sse._chunked_uvicorn_cycle.__code__.co_consts.count("uvicorn.protocols.http.httptools_impl") == 1
    assert cycle.__module__ == "uvicorn.protocols.http.httptools_impl"
    assert inspect.iscoroutinefunction(cycle.send)
    init = inspect.getsource(cycle.__init__)
    for attribute in ("self.transport", "self.flow", "self.disconnected", "self.chunked_encoding"):
        assert f"{attribute} =" in init or f"{attribute}:" in init, f"{attribute} is no longer set by uvicorn"
    # What the writer does for a body message: exactly what uvicorn's send writes for a chunked body.
    assert 'b"%x\\r\\n"' in inspect.getsource(cycle.send) or "%x\\r\\n" in inspect.getsource(cycle.send)
    flow = flow_control.FlowControl
    assert inspect.iscoroutinefunction(flow.drain)
    assert "self.write_paused" in inspect.getsource(flow.__init__)


@pytest.fixture
async def httptools_url(proxy_client: AppClient) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            proxy_client.app, host="127.0.0.1", port=port, log_level="error", lifespan="off", http="httptools"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_a_stream_behind_uvicorn_httptools_takes_the_direct_path(
    proxy_client: AppClient, httptools_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    found: list[Any] = []
    original = sse._chunked_uvicorn_cycle

    def recording(raw_send: Any) -> Any:
        cycle = original(raw_send)
        found.append(cycle)
        return cycle

    monkeypatch.setattr(sse, "_chunked_uvicorn_cycle", recording)
    body = {"model": "bench", "messages": [{"role": "user", "content": "one two three"}], "stream": True}
    headers = {"authorization": f"Bearer {proxy_client.key}"}
    async with (
        httpx.AsyncClient(base_url=httptools_url, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in lines[:-1] if "choices" in line
    )
    assert "one two three" in text
    assert len(found) == 1
    cycle = found[0]
    assert cycle is not None, "uvicorn's httptools cycle was not recognised: streams took the slow path"
    assert cycle.chunked_encoding is True
    assert hasattr(cycle.transport, "write") and hasattr(cycle.flow, "write_paused")
    assert isinstance(cycle.disconnected, bool)
