"""The bytes a raw test upstream writes for a streamed chat completion: an HTTP/1.1 response head,
chunked framing, SSE `data:` events in OpenAI's chunk shape, `[DONE]` and the terminating chunk."""

from __future__ import annotations

import json

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"  # the terminating chunk


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(i: int, content: str | None = None) -> bytes:
    """Chunk `i` of an answer, its text `t{i}` unless `content` says otherwise."""
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": {"content": f"t{i}" if content is None else content}, "finish_reason": None}],
    }
    return chunk(b"data: " + json.dumps(body).encode() + b"\n\n")


DONE = chunk(b"data: [DONE]\n\n")
