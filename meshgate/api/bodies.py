"""Reading request bodies: size limit, JSON parsing and schema validation in one msgspec pass.

msgspec's messages name the exact path of a bad field (`$.messages[0].content`); they are turned
into OpenAI-style messages with `param` set to that path.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request

from meshgate.errors import ClientDisconnected, InvalidRequest, PayloadTooLarge, UnsupportedMediaType

T = TypeVar("T")

# msgspec names a bad mapping key as "at `key` in `$.path`": the key is reported as its mapping.
_AT_PATH = re.compile(r" - at (?:`key` in )?`\$\.?(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most `limit` bytes (413 above). A client that hangs up while sending it is a
    client disconnect (499, logged at info), not a server error."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected() from None
    return b"".join(chunks)


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def validation_error(message: str) -> InvalidRequest:
    """Translate a msgspec validation message into an OpenAI-shaped 400 naming the field."""
    path = ""
    match = _AT_PATH.search(message)
    if match:
        path = match.group("path")
        message = message[: match.start()]
    if unknown := _UNKNOWN.match(message):
        param = _join(path, unknown.group("field"))
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if missing := _MISSING.match(message):
        param = _join(path, missing.group("field"))
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if not path:
        return InvalidRequest(f"Invalid request body: {message}", code="invalid_body")
    return InvalidRequest(f"Invalid value for '{path}': {message}", param=path, code="invalid_value")


async def decode_request(request: Request, schema: type[T], limit: int) -> T:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Expected a JSON body (content-type application/json), got {content_type}.")
    body = await read_body(request, limit)
    if not body.strip():
        raise InvalidRequest(
            "We could not parse the JSON body of your request: the body is empty. "
            "(HINT: send a JSON object with the request's parameters.)",
            code="invalid_json",
        )
    return decode_json(body, schema)


def decode_json(body: bytes, schema: type[T]) -> T:
    """`body` decoded and validated as `schema`; 400s that name the field or the JSON error."""
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc}). "
            "(HINT: the body must be valid JSON, sent with content-type application/json.)",
            code="invalid_json",
        ) from None
