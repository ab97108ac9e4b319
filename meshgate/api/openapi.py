"""The OpenAPI document of the API, generated from the same msgspec structs that validate requests."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate import __version__
from meshgate.api.anthropic_translate import CountTokensRequest, MessagesRequest
from meshgate.api.completions import CompletionRequest
from meshgate.api.responses import JSONBytesResponse
from meshgate.api.responses_api import ResponsesRequest
from meshgate.protocol import ChatCompletionRequest, EmbeddingRequest

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "An error in OpenAI's schema",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json_body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _post(operation: str, ref: dict[str, str], description: str, *extra_statuses: int) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation,
            "requestBody": _json_body(ref["$ref"]),
            "responses": {
                "200": {
                    "description": description,
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors(400, 404, 413, 415, 429, 502, 503, 504, *extra_statuses),
            },
        }
    }


def build_openapi() -> dict[str, Any]:
    (chat_ref, embed_ref, messages_ref, count_ref, responses_ref, completion_ref), components = (
        msgspec.json.schema_components(
            [
                ChatCompletionRequest,
                EmbeddingRequest,
                MessagesRequest,
                CountTokensRequest,
                ResponsesRequest,
                CompletionRequest,
            ],
            ref_template="#/components/schemas/{name}",
        )
    )
    components["Error"] = _ERROR
    ok_json = {"content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "meshgate", "version": __version__},
        "paths": {
            "/v1/chat/completions": _post(
                "createChatCompletion", chat_ref, "A chat.completion, or an SSE stream of chunks if stream is true"
            ),
            "/v1/embeddings": {
                "post": {
                    "operationId": "createEmbedding",
                    "requestBody": _json_body(embed_ref["$ref"]),
                    "responses": {
                        "200": {"description": "Embeddings", **ok_json},
                        **_errors(400, 404, 413, 415, 502, 503, 504),
                    },
                }
            },
            "/v1/messages": _post(
                "createMessage", messages_ref, "An Anthropic message, or an SSE stream of its events", 529
            ),
            "/v1/messages/count_tokens": _post("countMessageTokens", count_ref, "Input tokens"),
            "/v1/responses": _post("createResponse", responses_ref, "A response, or an SSE stream of its events"),
            "/v1/completions": _post("createCompletion", completion_ref, "A text_completion, or an SSE stream"),
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "responses": {"200": {"description": "Models", **ok_json}},
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "A model", **ok_json}, **_errors(404)},
                }
            },
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "Alive", **ok_json}}}},
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "Ready", **ok_json},
                        "503": {"description": "Not ready", **ok_json},
                    },
                }
            },
        },
        "components": {"schemas": components},
    }


async def openapi_json(request: Request) -> Response:
    return JSONBytesResponse(request.app.state.openapi)


ROUTES = [Route("/openapi.json", openapi_json, methods=["GET"])]
