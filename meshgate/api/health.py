"""Liveness and readiness probes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.api.responses import JSONBytesResponse

if TYPE_CHECKING:
    from meshgate.gateway.runtime import Runtime


async def healthz(request: Request) -> Response:
    return JSONBytesResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    checks = await runtime.readiness()
    ready = all(checks.values())
    return JSONBytesResponse(
        {"status": "ready" if ready else "not ready", "checks": checks, "time": time.time()},
        status_code=200 if ready else 503,
    )


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
