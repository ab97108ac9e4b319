"""JSON and error responses, encoded once with msgspec, and the mapping of typed errors to HTTP."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.responses import Response

from meshgate.errors import InternalError, MeshError

log = logging.getLogger("meshgate.api")
_encode = msgspec.json.Encoder().encode

#: Longest client-supplied text echoed in an error body or written in a log line, in characters.
MAX_ECHO = 512


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out: a 1 MB model name
    must not come back whole in a 404, nor fill the logs."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def encode_json(value: Any) -> bytes:
    return _encode(value)


class JSONBytesResponse(Response):
    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(_encode(content), status_code=status_code, headers=headers)


def error_response(error: MeshError, request_id: str) -> Response:
    """The one place a typed error becomes an HTTP response in OpenAI's error schema; long values
    (an echoed model name, a field path) are clipped."""
    body = error.body()
    fields = body.get("error")
    if isinstance(fields, dict):
        for name, value in fields.items():
            if isinstance(value, str) and len(value) > MAX_ECHO:
                fields[name] = clip(value)
    return JSONBytesResponse(body, status_code=error.status, headers=error.headers())


def unexpected_error(exc: BaseException, request_id: str) -> Response:
    """A bug: logged with its traceback server-side, never shown to the client."""
    log.error("unexpected error in request %s", request_id, exc_info=exc)
    return error_response(InternalError(request_id), request_id)
