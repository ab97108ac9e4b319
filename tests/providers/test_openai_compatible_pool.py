"""Pooled upstream connections: a keep-alive connection the upstream closed is retried once, fresh.

The upstream here is a raw asyncio server, so the test controls exactly when a connection closes:
it answers the first request on each connection, then closes that connection when the second
request arrives without answering (as a server whose idle timeout fired while the gateway was
reusing the connection).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshgate.errors import UpstreamError
from meshgate.protocol import ChatCompletionRequest, UserMessage
from meshgate.providers.base import CallContext, ProviderContext
from meshgate.providers.openai_compatible import OpenAICompatibleChat, OpenAICompatibleConfig

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class OneRequestPerConnection:
    """Answers one request per connection; on a second request, closes without a byte."""

    def __init__(self, answer_first: bool = True) -> None:
        self.answer_first = answer_first
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if answered or not self.answer_first:
                    return  # close the connection without answering
                body = json.dumps(COMPLETION).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: keep-alive\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
                answered = True
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[OneRequestPerConnection, int]]:
    upstream = OneRequestPerConnection()
    listener = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield upstream, port


async def make_model(port: int) -> OpenAICompatibleChat:
    config = OpenAICompatibleConfig(
        name="pooled", provider="openai-compatible", model="up", base_url=f"http://127.0.0.1:{port}/v1"
    )
    model = OpenAICompatibleChat(config, ProviderContext(data_dir=Path(".")))
    await model.start()
    return model


REQUEST = ChatCompletionRequest(model="pooled", messages=[UserMessage(content="hello")])


async def test_a_closed_pooled_connection_is_retried_on_a_fresh_one(
    server: tuple[OneRequestPerConnection, int],
) -> None:
    upstream, port = server
    model = await make_model(port)
    try:
        for _ in range(3):
            result = await model.complete(REQUEST, CallContext(request_id="r"))
            assert result["choices"][0]["message"]["content"] == "hi"
            assert result["model"] == "pooled"
    finally:
        await model.close()
    # Calls 2 and 3 each found their pooled connection closed: 5 requests over 3 connections.
    assert upstream.connections == 3
    assert upstream.requests == 5


async def test_an_upstream_that_never_answers_fails_after_one_retry() -> None:
    upstream = OneRequestPerConnection(answer_first=False)
    listener = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        model = await make_model(port)
        try:
            with pytest.raises(UpstreamError) as caught:
                await model.complete(REQUEST, CallContext(request_id="r"))
        finally:
            await model.close()
    assert caught.value.status == 502
    assert upstream.requests == 2  # the first try and exactly one retry
