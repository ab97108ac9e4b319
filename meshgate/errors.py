"""Typed errors. Every failure meshgate reports is one of these; the API layer maps them once.

Each error knows its HTTP status and the OpenAI error fields (`type`, `code`, `param`), so routes and
providers raise and never build error responses themselves.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MeshError(Exception):
    """Base of every error meshgate reports to a client."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    #: A short stable name for logs and metrics ("invalid_request", "upstream_timeout", ...).
    kind: ClassVar[str] = "internal"
    #: True for answers that are not failures (a call held for review): every API sends body() as
    #: it is instead of wrapping it in its own error schema.
    verbatim: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(MeshError):
    """The request is malformed or violates the schema (400)."""

    status = 400
    type = "invalid_request_error"
    kind = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    """The request asks for something the model cannot do; never silently ignored (400)."""

    default_code = "unsupported_parameter"
    kind = "unsupported"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"
    kind = "context_length"


class ModelNotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"
    kind = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class RouteNotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"
    kind = "not_found"


class MethodNotAllowed(MeshError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"
    kind = "method_not_allowed"


class PayloadTooLarge(MeshError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"
    kind = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the limit of {limit} bytes.")


class UnsupportedMediaType(MeshError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"
    kind = "media_type"


class RetryLater(MeshError):
    """An error the client may retry after `retry_after` seconds, said in `Retry-After`."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class Overloaded(RetryLater):
    """Too many requests are already queued for a model (503)."""

    status = 503
    type = "server_error"
    default_code = "overloaded"
    kind = "overloaded"


class RateLimited(RetryLater):
    """Too many requests or tokens (429)."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    kind = "rate_limited"


class BudgetExceeded(RetryLater):
    """A key's or team's budget for the period is spent (429, like OpenAI's insufficient_quota)."""

    status = 429
    type = "insufficient_quota"
    default_code = "budget_exceeded"
    kind = "budget_exceeded"


class UpstreamError(MeshError):
    """The upstream model failed or answered with something we cannot use (502)."""

    status = 502
    type = "upstream_error"
    default_code = "upstream_error"
    kind = "upstream_error"

    def __init__(self, message: str, *, provider: str = "", upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.upstream_status = upstream_status


class StreamCut(UpstreamError):
    """A streamed answer broke after part of it reached the client (502): the stream ends with an
    error event and the call is recorded as cut, charged for what was delivered."""

    default_code = "stream_cut"
    kind = "stream_cut"


class UpstreamTimeout(UpstreamError):
    status = 504
    default_code = "upstream_timeout"
    kind = "upstream_timeout"


class ServiceUnavailable(MeshError):
    status = 503
    type = "server_error"
    default_code = "unavailable"
    kind = "unavailable"


class ClientDisconnected(MeshError):
    """The client hung up before the answer was ready; nobody reads this response (nginx's 499)."""

    status = 499
    type = "invalid_request_error"
    default_code = "client_closed_request"
    kind = "client_disconnected"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the response was ready.")


class InternalError(MeshError):
    """Anything unexpected. The message never carries a traceback or internal detail."""

    kind = "internal"

    def __init__(self, request_id: str = "") -> None:
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"The server had an error while processing your request{suffix}.")


class ConfigError(Exception):
    """mesh.yaml or a setting is invalid. The message names the file, the field and the reason."""


class StartupError(Exception):
    """The server cannot start: the message says what and where (a model file, Redis), and is all
    that is printed (no traceback) before the process exits non-zero."""


class HeadersTooLarge(MeshError):
    """Too many request headers, or too many bytes of them (431, Request Header Fields Too Large)."""

    status = 431
    type = "invalid_request_error"
    default_code = "request_header_fields_too_large"
    kind = "headers_too_large"
