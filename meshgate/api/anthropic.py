"""Anthropic-compatible routes: POST /v1/messages and /v1/messages/count_tokens, for every model.

The request is translated into a ChatCompletionRequest (api/anthropic_translate.py) and runs through
the same pipeline as /v1/chat/completions: same model resolution, grants, capability check, limits,
budgets and records. Errors come back in Anthropic's schema with its status codes. The key may come
as `x-api-key` or `Authorization: Bearer` (control/policy.py); `anthropic-version` is accepted and
not needed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from meshgate.api.anthropic_translate import (
    CountTokensRequest,
    MessagesRequest,
    StreamTranslator,
    error_body,
    to_anthropic_message,
    to_openai,
)
from meshgate.api.bodies import decode_request
from meshgate.api.calls import new_call, runtime_of, unless_disconnected
from meshgate.api.responses import JSONBytesResponse, clip
from meshgate.api.sse import EventStreamResponse, SSEWriter
from meshgate.control.policy import Policy
from meshgate.errors import InternalError, MeshError, ModelNotFound
from meshgate.gateway.capabilities import check_chat
from meshgate.gateway.pipeline import estimate_prompt_tokens
from meshgate.providers.base import ChatModel
from meshgate.providers.local.chat import LocalLlamaModel

if TYPE_CHECKING:
    pass

log = logging.getLogger("meshgate.api")

#: Response header of count_tokens: `tokenizer` (the model's own) or `estimate` (about 4 characters a token).
COUNT_METHOD_HEADER = "meshgate-token-count"


def _error_response(request: Request, error: MeshError) -> Response:
    """A typed error in Anthropic's schema; counted and logged like the app's own handler does."""
    request.app.state.counters.error(error.status, error.kind)
    level = logging.WARNING if error.status >= 500 else logging.INFO
    log.log(
        level,
        "%s %s -> %d %s: %s",
        request.method,
        clip(request.url.path),
        error.status,
        error.kind,
        clip(error.message),
        extra={"request_id": getattr(request.state, "request_id", "")},
    )
    status, body = error_body(error)
    if "error" in body:
        body["error"]["message"] = clip(body["error"]["message"])
    return JSONBytesResponse(body, status_code=status, headers=error.headers())


def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = getattr(request.state, "request_id", "")
    log.error("unexpected error in request %s", request_id, exc_info=exc)
    return _error_response(request, InternalError(request_id))


class _AnthropicStream:
    """An EventStreamResponse whose failures before the first byte are answered in Anthropic's
    schema (after it, the stream ends with an `error` event)."""

    def __init__(self, request: Request, inner: EventStreamResponse) -> None:
        self.request, self.inner = request, inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        except MeshError as error:
            await _error_response(self.request, error)(scope, receive, send)
        except Exception as exc:
            await _unexpected(self.request, exc)(scope, receive, send)


def _anthropic_errors(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
    async def route(request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except MeshError as error:
            return _error_response(request, error)
        except Exception as exc:
            return _unexpected(request, exc)
        return response

    return route


async def messages(request: Request) -> Any:
    runtime = runtime_of(request)
    body = await decode_request(request, MessagesRequest, runtime.settings.max_body_bytes)
    stops = body.stop_sequences or []
    call = new_call(request, "chat.completions", to_openai(body, stream=bool(body.stream)))
    if not body.stream:
        result = await unless_disconnected(request, runtime.pipeline.complete(call))
        return JSONBytesResponse(to_anthropic_message(result, body.model, stops), headers=call.response_headers)
    # The local model counts the prompt before its first chunk: message_start carries it then.
    translator = StreamTranslator(body.model, stops, lambda: call.ctx.prompt_tokens)

    def failure(error: Exception) -> bytes:
        if not isinstance(error, MeshError):
            log.error("stream %s failed unexpectedly", call.request_id, exc_info=error)
            error = InternalError(call.request_id)
        else:
            log.warning("stream %s failed: %s (%s)", call.request_id, clip(error.message), error.kind)
        return StreamTranslator.failure(error)

    async def produce(writer: SSEWriter) -> None:
        await runtime.pipeline.stream(call, writer)
        writer.write(translator.finish())

    inner = EventStreamResponse(produce, translator.encode, failure, b"", headers=call.response_headers)
    return _AnthropicStream(request, inner)


async def count_tokens(request: Request) -> Response:
    """The prompt's tokens: by the model's own chat template and tokenizer for a local model; for
    any other an estimate (about four characters a token), said in the `meshgate-token-count` header."""
    runtime = runtime_of(request)
    body = await decode_request(request, CountTokensRequest, runtime.settings.max_body_bytes)
    translated = to_openai(body)
    model = runtime.models.get(body.model)
    if model is None or not isinstance(model, ChatModel):
        raise ModelNotFound(body.model)
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        Policy.authorize(principal, "model", body.model, "use")
    check_chat(translated, model.profile)
    if isinstance(model, LocalLlamaModel):
        prepared = await model._prepare_off_loop(translated)
        count, method = len(prepared.prompt_tokens), "tokenizer"
    else:
        tools = sum(len(str(t.input_schema)) + len(t.name) + len(t.description or "") for t in body.tools or ())
        count, method = estimate_prompt_tokens(translated) + tools // 4, "estimate"
    return JSONBytesResponse({"input_tokens": count}, headers={COUNT_METHOD_HEADER: method})


ROUTES = [
    Route("/v1/messages", _anthropic_errors(messages), methods=["POST"]),
    Route("/v1/messages/count_tokens", _anthropic_errors(count_tokens), methods=["POST"]),
]
