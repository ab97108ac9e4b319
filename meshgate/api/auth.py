"""Authentication for every protected route, and the grants that routes require, in one place.

`/v1/*` needs a valid key; the model grant is checked by the pipeline (the model is in the body).
`/admin/<resource>` needs `admin:<resource>:read` for GET and `admin:<resource>:write` otherwise.
`/healthz`, `/readyz` and `/openapi.json` are public. A key this server does not know yet is looked
up once more (a shared, rate-limited check of the control version) before it is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from meshgate.api.anthropic_translate import error_body as anthropic_error_body
from meshgate.api.responses import JSONBytesResponse, clip, error_response
from meshgate.control.policy import Policy, UnknownKey
from meshgate.errors import MeshError
from meshgate.observe.counters import Counters

log = logging.getLogger("meshgate.control")

ANTHROPIC_PREFIX = "/v1/messages"

PUBLIC = ("/healthz", "/readyz", "/openapi.json")


def required_grant(method: str, path: str) -> tuple[str, str, str] | None:
    if path.startswith("/admin/"):
        resource = path.split("/")[2] or "*"
        return ("admin", resource, "read" if method in ("GET", "HEAD") else "write")
    if path == "/metrics":
        return ("metrics", "*", "read")
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, policy: Callable[[], Policy], counters: Counters) -> None:
        # A callable: the runtime builds its policy only when it starts, after the app exists.
        self.app = app
        self.policy = policy
        self.counters = counters

    @staticmethod
    def _refusal(path: str, error: MeshError, request_id: str) -> Response:
        """The refusal in the schema of the API that was called: Anthropic's for /v1/messages (its
        SDK reads `error.type`), OpenAI's everywhere else."""
        if path.startswith(ANTHROPIC_PREFIX):
            status, body = anthropic_error_body(error)
            return JSONBytesResponse(body, status_code=status, headers=error.headers())
        return error_response(error, request_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            policy = self.policy()
            try:
                principal = policy.authenticate(Headers(scope=scope))  # memory only: no await on a known key
            except UnknownKey as miss:
                principal = await policy.recheck(miss)  # a key made a moment ago must work at once
            grant = required_grant(scope["method"], scope["path"])
            if grant is not None:
                policy.authorize(principal, *grant)
        except MeshError as error:
            self.counters.error(error.status, error.kind)
            log.info("%s %s -> %d %s", scope["method"], clip(scope["path"]), error.status, error.kind)
            await self._refusal(scope["path"], error, state.get("request_id", ""))(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)
