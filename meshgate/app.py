"""Builds the ASGI app: routes, the request-id and error middleware, and the runtime's lifecycle."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshgate.api import (
    admin,
    anthropic,
    banks,
    completions,
    guards,
    health,
    openai,
    openapi,
    responses_api,
    reviews,
)
from meshgate.api.auth import AuthMiddleware
from meshgate.api.responses import clip, error_response, unexpected_error
from meshgate.api.sse import RAW_SEND
from meshgate.collector import Collector
from meshgate.errors import HeadersTooLarge, MeshError, MethodNotAllowed, RouteNotFound, StartupError
from meshgate.gateway.runtime import Runtime
from meshgate.guards.release import make_release
from meshgate.observe import metrics
from meshgate.observe.counters import Counters

log = logging.getLogger("meshgate.api")

#: Caps on request headers (uvicorn's httptools parser has none): more headers, or more bytes of
#: names and values together, are refused with a 431 before authentication or routing.
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 64 * 1024


def headers_too_large(headers: list[tuple[bytes, bytes]]) -> HeadersTooLarge | None:
    if len(headers) > MAX_HEADER_COUNT:
        return HeadersTooLarge(f"Too many request headers: {len(headers)}, the limit is {MAX_HEADER_COUNT}.")
    size = 0
    for name, value in headers:
        size += len(name) + len(value)
    if size > MAX_HEADER_BYTES:
        return HeadersTooLarge(f"Request headers are larger than the limit of {MAX_HEADER_BYTES} bytes.")
    return None


class RequestIdMiddleware:
    """Gives every request an id (`x-request-id` on every response), refuses oversized headers
    (431), and turns any unexpected exception into a 500 in OpenAI's schema without a traceback."""

    def __init__(self, app: ASGIApp, counters: Counters, collector: Collector) -> None:
        self.app = app
        self.counters = counters
        self.collector = collector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        started = False
        self.collector.active += 1

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            refused = headers_too_large(scope["headers"])
            if refused is not None:
                self.counters.error(refused.status, refused.kind)
                log.info("%s -> %d %s: %s", request_id, refused.status, refused.kind, refused.message)
                await error_response(refused, request_id)(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            self.counters.error(500, "internal")
            if started:
                log.error("request %s failed after its response started", request_id, exc_info=exc)
                return
            response = unexpected_error(exc, request_id)
            await response(scope, receive, send_with_id)
        finally:
            self.collector.active -= 1


class _KeepServerSend:
    """Outermost of all: keeps the server's own `send` in the scope, for streams' body messages
    past every wrapper (see api/sse.py). Taken out again when the request ends: the scope outlives
    it inside the server's request object, and the send refers back to that object, a reference
    cycle per request for the GC to find otherwise."""

    def __init__(self, app: ASGIApp, startup_failure: list[str]) -> None:
        self.app = app
        self.startup_failure = startup_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._concise_failure(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[RAW_SEND] = send
        try:
            await self.app(scope, receive, send)
        finally:
            del scope[RAW_SEND]

    def _concise_failure(self, send: Send) -> Send:
        """A startup that failed for a known reason (StartupError) is reported by its message alone,
        not by the traceback Starlette hands the server."""

        async def concise(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.startup_failure:
                message = {**message, "message": f"meshgate cannot start: {self.startup_failure[0]}"}
            await send(message)

        return concise


class _MeshApp(Starlette):
    startup_failure: list[str]

    def build_middleware_stack(self) -> ASGIApp:
        return _KeepServerSend(super().build_middleware_stack(), self.startup_failure)


def build_app(runtime: Runtime, *, manage_runtime: bool = True) -> _MeshApp:
    """The ASGI app. With `manage_runtime`, its lifespan starts and stops the runtime."""
    counters = runtime.counters
    collector = Collector(runtime.settings.gc_full_interval)

    async def on_mesh_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MeshError)
        counters.error(exc.status, exc.kind)
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(
            level,
            "%s %s -> %d %s: %s",
            request.method,
            clip(request.url.path),
            exc.status,
            exc.kind,
            clip(exc.message),
            extra={"request_id": request.state.request_id},
        )
        return error_response(exc, request.state.request_id)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: MeshError
        if exc.status_code == 405:
            error = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
        else:
            error = RouteNotFound(f"Unknown request URL: {request.method} {request.url.path}.")
        return await on_mesh_error(request, error)

    startup_failure: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_runtime:
            try:
                await runtime.start()
            except StartupError as exc:
                startup_failure.append(str(exc))
                await runtime.stop()  # what did start (database, writers) closes cleanly
                raise
            collector.start()
        try:
            yield
        finally:
            if manage_runtime:
                collector.stop()
                await runtime.stop()

    app = _MeshApp(
        routes=[
            *openai.ROUTES,
            *responses_api.ROUTES,
            *completions.ROUTES,
            *anthropic.ROUTES,
            *guards.ROUTES,
            *banks.ROUTES,
            *admin.ROUTES,
            *reviews.ROUTES,
            *metrics.ROUTES,
            *health.ROUTES,
            *openapi.ROUTES,
        ],
        exception_handlers={MeshError: on_mesh_error, HTTPException: on_http_error},
        lifespan=lifespan,
    )
    app.startup_failure = startup_failure
    app.state.runtime = runtime
    # GET /v1/reviews/{id} runs an approved call that was held on input, as the key that sent it.
    app.state.review_release = make_release(
        lambda: runtime.pipeline,
        (lambda key_id: runtime.keys.principal_by_id(key_id) if runtime.keys is not None else None)
        if runtime.settings.auth
        else None,
    )
    app.state.metrics = runtime.metrics
    app.state.counters = counters
    app.state.collector = collector
    app.state.openapi = openapi.build_openapi()
    # Added last = runs first: request id and error guard outermost, then authentication.
    app.add_middleware(AuthMiddleware, policy=lambda: runtime.policy, counters=counters)
    app.add_middleware(RequestIdMiddleware, counters=counters, collector=collector)
    return app
