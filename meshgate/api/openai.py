"""OpenAI-compatible routes: /v1/chat/completions, /v1/embeddings, /v1/models.

HTTP surface only: parse, hand the call to the pipeline, shape the answer. No checks live here;
they are pipeline steps.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.api.bodies import decode_request
from meshgate.api.calls import DONE, failure_event, new_call, runtime_of, unless_disconnected
from meshgate.api.responses import JSONBytesResponse, encode_json, error_response, unexpected_error
from meshgate.api.sse import EventStreamResponse
from meshgate.errors import ModelNotFound
from meshgate.protocol import ChatCompletionRequest, EmbeddingRequest

if TYPE_CHECKING:
    from meshgate.gateway.runtime import Runtime

log = logging.getLogger("meshgate.api")
T = TypeVar("T")


def _chunk_encoder(include_usage: bool) -> Callable[[dict[str, Any]], bytes | None]:
    """SSE bytes for a chunk. The usage chunk is the client's only if it asked for it."""

    def encode(chunk: dict[str, Any]) -> bytes | None:
        if include_usage:
            chunk.setdefault("usage", None)
        elif not chunk.get("choices") and "citations" not in chunk:
            # The usage-only chunk the gateway asked for for its own accounting (a grounded
            # answer's last chunk, with citations and no choices, goes out).
            return None
        else:
            chunk.pop("usage", None)
        return b"data: " + encode_json(chunk) + b"\n\n"

    return encode


async def chat_completions(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await decode_request(request, ChatCompletionRequest, runtime.settings.max_body_bytes)
    call = new_call(request, "chat.completions", body)
    if not body.stream:
        result = await unless_disconnected(request, runtime.pipeline.complete(call))
        return JSONBytesResponse(result, headers=call.response_headers)
    # The response starts only once the first chunk is there, so that failures before any output
    # (unknown model, refused parameter, upstream down) are proper HTTP errors. The headers are
    # read then too: steps add theirs (rate-limit headers) on the way to the first chunk.
    return EventStreamResponse(  # type: ignore[return-value]
        lambda writer: runtime.pipeline.stream(call, writer),
        _chunk_encoder(body.wants_usage_chunk),
        failure_event(call),
        DONE,
        headers=call.response_headers,
    )


def _encode_vector(vector: list[float], encoding: str | None) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def embeddings(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await decode_request(request, EmbeddingRequest, runtime.settings.max_body_bytes)
    call = new_call(request, "embeddings", body)
    result = await unless_disconnected(request, runtime.pipeline.embed(call, body.inputs()))
    return JSONBytesResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
                for i, v in enumerate(result.vectors)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        },
        headers=call.response_headers,
    )


def _model_card(runtime: Runtime, name: str) -> dict[str, Any]:
    model = runtime.models[name]
    profile = model.profile
    return {
        "id": name,
        "object": "model",
        "created": runtime.started_at,
        "owned_by": "meshgate",
        "meshgate": {
            "provider": model.provider,
            "kind": "chat" if profile.chat else "embedding",
            "description": model.config.description,
            "ready": model.ready(),
            "price": model.config.price.model_dump(),
            # Where the model comes from and under which license: what the provider knows, with
            # mesh.yaml's `card:` laid over it.
            "card": {**model.card(), **model.config.card},
            "capabilities": {
                key: value
                for key, value in vars(profile).items()
                if value not in (None, False) and key not in ("chat", "embeddings")
            },
            **model.describe(),
        },
    }


async def list_models(request: Request) -> Response:
    runtime = runtime_of(request)
    return JSONBytesResponse({"object": "list", "data": [_model_card(runtime, n) for n in runtime.models]})


async def get_model(request: Request) -> Response:
    runtime = runtime_of(request)
    name = request.path_params["model"]
    if name not in runtime.models:
        raise ModelNotFound(name)
    return JSONBytesResponse(_model_card(runtime, name))


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]

__all__ = ["ROUTES", "error_response", "unexpected_error"]
