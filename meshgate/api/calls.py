"""What every route that runs a model call shares: the runtime, the pipeline's Call, cancelling the
work when the client hangs up, and the last event of a stream that failed midway (OpenAI's schema).
Used by the OpenAI, Anthropic, Responses and legacy completions routes alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import Request

from meshgate.api.responses import clip, encode_json
from meshgate.errors import ClientDisconnected, InternalError, MeshError
from meshgate.gateway.pipeline import Call
from meshgate.protocol import ChatCompletionRequest, EmbeddingRequest

if TYPE_CHECKING:
    from meshgate.gateway.runtime import Runtime

log = logging.getLogger("meshgate.api")
T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def new_call(request: Request, endpoint: str, body: ChatCompletionRequest | EmbeddingRequest) -> Call:
    return Call(
        endpoint=endpoint,
        request=body,
        headers=request.headers,
        request_id=request.state.request_id,
        principal=getattr(request.state, "principal", None),
    )


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client hangs up first (a local model then stops generating)."""
    task = asyncio.ensure_future(work)
    hung_up = False

    async def watch() -> None:
        nonlocal hung_up
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                hung_up = True
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if hung_up and not _cancelling():
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _cancelling() -> bool:
    """Whether this task itself is being cancelled (server shutdown), not just the work it awaited."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def failure_event(call: Call) -> Callable[[Exception], bytes]:
    """A failure after the first event becomes a last event in OpenAI's error schema."""

    def failure(error: Exception) -> bytes:
        if isinstance(error, MeshError):
            log.warning("stream %s failed: %s (%s)", call.request_id, clip(error.message), error.kind)
            return b"data: " + encode_json(error.body()) + b"\n\n"
        # A bug: logged, never leaked into the stream.
        log.error("stream %s failed unexpectedly", call.request_id, exc_info=error)
        return b"data: " + encode_json(InternalError(call.request_id).body()) + b"\n\n"

    return failure
