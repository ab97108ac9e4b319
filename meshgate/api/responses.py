"""JSON and error responses, encoded once with msgspec, and the mapping of typed errors to HTTP."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.responses import Response

from meshgate.errors import InternalError, MeshError

log = logging.getLogger("meshgate.api")
_encode = msgspec.json.Encoder().encode


def encode_json(value: Any) -> bytes:
    return _encode(value)


class JSONBytesResponse(Response):
    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(_encode(content), status_code=status_code, headers=headers)


def error_response(error: MeshError, request_id: str) -> Response:
    """The one place a typed error becomes an HTTP response in OpenAI's error schema."""
    return JSONBytesResponse(error.body(), status_code=error.status, headers=error.headers())


def unexpected_error(exc: BaseException, request_id: str) -> Response:
    """A bug: logged with its traceback server-side, never shown to the client."""
    log.error("unexpected error in request %s", request_id, exc_info=exc)
    return error_response(InternalError(request_id), request_id)
