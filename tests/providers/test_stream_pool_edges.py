"""The stream client's edges: pool slots on cancellation, connections ending paused, interim 1xx
answers, IPv6 upstreams, idle connections past the keep-alive time."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from meshgate.errors import MeshError
from meshgate.providers.base import ProviderContext
from meshgate.providers.openai_compatible import OpenAICompatibleChat, OpenAICompatibleConfig
from meshgate.providers.streaming import Valve
from tests.providers.test_stream_client import (
    Request,
    Upstream,
    answer,
    collect,
    eventually,
    model_on,
    open_stream,
    serving,
    text,
)
from tests.sse_wire import DONE, END, HEAD, event


async def test_a_cancel_right_after_the_slot_was_acquired_gives_the_slot_back() -> None:
    async def stream_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(0))
        await writer.drain()
        return True

    async with serving(stream_answer) as upstream, model_on(upstream.port, max_connections=1) as model:
        assert await collect(model) == ["t0"]  # one idle pooled connection: acquire() won't suspend
        pool = model.upstream.streams
        stream = open_stream(model)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # `first` runs up to `await opening`; the acquire task is queued
        # The cancel runs right after the acquire task's single step (it got the pooled connection)
        # and before `first` resumes: what a hang-up or a request timeout does in that iteration.
        asyncio.get_running_loop().call_soon(first.cancel)
        with pytest.raises(asyncio.CancelledError):
            await first
        await stream.aclose()  # what the pipeline does on its way out
        assert pool._slots is not None
        assert not pool._slots.locked(), f"slot leaked: in use {len(pool._in_use)}, idle {len(pool._idle)}"


async def test_a_stream_ending_paused_before_its_terminating_chunk_is_pooled() -> None:
    async def done_then_end(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD + event(0))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(event(1) + DONE)  # the last event and [DONE] ...
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(END)  # ... and the terminating chunk in a later write, as most servers do
        await writer.drain()
        return True

    async with serving(done_then_end) as upstream, model_on(upstream.port, max_connections=1) as model:
        pool = model.upstream.streams
        stream = open_stream(model)
        valve = Valve()
        received: list[str] = []

        def deliver(item: dict[str, Any]) -> None:
            received.append(text(item))
            valve.pause()  # the client is slow as the answer ends (SSEWriter: transport above high water)

        try:
            await anext(stream)
            await stream.relay(deliver, valve)
        finally:
            await stream.aclose()
        valve.resume()  # the client drains a moment later (SSEWriter._drained)
        assert received == ["t1"]
        # Pooled once the terminating chunk is read: well within a second (not after DETACHED_GRACE).
        await eventually(lambda: bool(pool._idle), within=1.0)


async def test_an_interim_103_answer_is_skipped() -> None:
    async def early_hints(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(answer(0, 1))
        await writer.drain()
        return True

    async with serving(early_hints) as upstream, model_on(upstream.port) as model:
        assert await collect(model) == ["t0", "t1"]


async def test_an_ipv6_upstream_gets_a_valid_host_header() -> None:
    async def stream_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(0))
        await writer.drain()
        return True

    upstream = Upstream(stream_answer)
    server = await asyncio.start_server(upstream.handle, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    config = OpenAICompatibleConfig(
        name="streamed", provider="openai-compatible", model="up", base_url=f"http://[::1]:{port}/v1"
    )
    model = OpenAICompatibleChat(config, ProviderContext(data_dir=Path(".")))
    await model.start()
    try:
        async with server:
            assert await collect(model) == ["t0"]
    finally:
        await model.close()
        for task in list(upstream.tasks):
            task.cancel()
        await asyncio.gather(*upstream.tasks, return_exceptions=True)
    assert upstream.requests[0].headers["host"] == f"[::1]:{port}"


async def test_after_an_interim_answer_the_next_stream_gets_its_own_answer() -> None:
    async def early_hints_first(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.number == 1:
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(answer(100, 101))  # the first caller's answer
        else:
            writer.write(answer(0, 1))
        await writer.drain()
        return True

    async with serving(early_hints_first) as upstream, model_on(upstream.port) as model:
        with contextlib.suppress(MeshError):
            await collect(model)  # the first call fails ('ended early'): the subject of the test above
        second = await collect(model)  # another client's call, on the pooled connection
    assert second == ["t0", "t1"], f"the second call received {second}"


async def test_an_idle_connection_is_closed_after_the_keepalive_time() -> None:
    async def stream_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(0))
        await writer.drain()
        return True

    async with serving(stream_answer) as upstream, model_on(upstream.port) as model:
        model.upstream.streams.keepalive_timeout = 0.2  # 60 s in the product
        assert await collect(model) == ["t0"]
        await asyncio.sleep(0.6)
        assert upstream.eofs == 1, "the idle connection is still open"


async def test_the_wait_for_a_free_connection_is_no_read_timeout() -> None:
    # One connection; the first stream holds it longer than read_timeout; the second waits for it
    # and must then get its answer, not "sent nothing" (its request was not even sent yet).
    async def slow_then_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD + event(0))
        await writer.drain()
        for i in range(1, 6 if request.number == 1 else 1):  # the first: half a second, never silent long
            await asyncio.sleep(0.1)
            writer.write(event(i))
            await writer.drain()
        writer.write(DONE + END)
        await writer.drain()
        return True

    async with (
        serving(slow_then_answer) as upstream,
        model_on(upstream.port, max_connections=1, read_timeout=0.3) as model,
    ):
        first, second = await asyncio.gather(collect(model), collect(model))
    assert sorted([first, second]) == [["t0"], ["t0", "t1", "t2", "t3", "t4", "t5"]]
