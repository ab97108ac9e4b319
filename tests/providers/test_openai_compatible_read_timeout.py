"""A stream's read timeout: the longest the gateway waits for the upstream's next bytes.

The upstream is a raw asyncio server, so the test decides exactly when it goes silent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meshgate.errors import UpstreamTimeout
from meshgate.protocol import ChatCompletionRequest, UserMessage
from meshgate.providers.base import CallContext, ProviderContext
from meshgate.providers.openai_compatible import OpenAICompatibleChat, OpenAICompatibleConfig
from tests.sse_wire import DONE, END, HEAD, event

REQUEST = ChatCompletionRequest(model="watched", messages=[UserMessage(content="hello")], stream=True)
Script = Callable[[asyncio.StreamWriter], Any]


async def serve(script: Script) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        try:
            await script(writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def model_on(port: int, read_timeout: float) -> OpenAICompatibleChat:
    config = OpenAICompatibleConfig(
        name="watched",
        provider="openai-compatible",
        model="up",
        base_url=f"http://127.0.0.1:{port}/v1",
        read_timeout=read_timeout,
    )
    model = OpenAICompatibleChat(config, ProviderContext(data_dir=Path(".")))
    await model.start()
    return model


async def collect(stream: AsyncIterator[dict[str, Any]], pause: float = 0.0) -> list[str]:
    texts = []
    async for chunk in stream:
        texts.append(chunk["choices"][0]["delta"]["content"])
        await asyncio.sleep(pause)
    return texts


async def test_an_upstream_silent_mid_stream_times_out_after_read_timeout() -> None:
    async def one_event_then_silence(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + event(0))
        await writer.drain()
        await asyncio.sleep(5)

    server, port = await serve(one_event_then_silence)
    async with server:
        model = await model_on(port, read_timeout=0.3)
        received: list[str] = []
        started = time.monotonic()
        try:
            with pytest.raises(UpstreamTimeout) as caught:
                async for chunk in model.stream(REQUEST, CallContext(request_id="r")):
                    received.append(chunk["choices"][0]["delta"]["content"])
        finally:
            await model.close()
    waited = time.monotonic() - started
    assert received == ["t0"]
    assert "sent nothing for 0.3s" in caught.value.message
    assert caught.value.status == 504
    assert 0.25 < waited < 3  # the timeout, not the upstream's 5 s of silence
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]  # the cancel was taken back


async def test_an_upstream_silent_before_its_headers_times_out() -> None:
    async def silence(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server, port = await serve(silence)
    async with server:
        model = await model_on(port, read_timeout=0.3)
        try:
            with pytest.raises(UpstreamTimeout):
                await collect(model.stream(REQUEST, CallContext(request_id="r")))
        finally:
            await model.close()


async def test_a_slow_consumer_is_not_an_upstream_timeout() -> None:
    # The upstream answers promptly; the consumer takes longer than read_timeout per event.
    async def prompt(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for i in range(4):
            writer.write(event(i))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(DONE + END)
        await writer.drain()

    server, port = await serve(prompt)
    async with server:
        model = await model_on(port, read_timeout=0.3)
        try:
            texts = await collect(model.stream(REQUEST, CallContext(request_id="r")), pause=0.4)
        finally:
            await model.close()
    assert texts == ["t0", "t1", "t2", "t3"]
