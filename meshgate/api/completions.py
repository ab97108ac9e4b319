"""The legacy text completions API (`POST /v1/completions`) on top of the chat pipeline.

meshgate serves chat models only, so the prompt is sent as one user message (the model's chat
template applies) and the answer comes back as `text_completion` objects. What cannot be honoured
that way (`echo`, `suffix`, `logprobs`, `best_of` above 1, several prompts or token-id prompts) is
refused with a 400 naming the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.api.bodies import decode_request, validation_error
from meshgate.api.calls import DONE, failure_event, new_call, runtime_of, unless_disconnected
from meshgate.api.responses import JSONBytesResponse, encode_json
from meshgate.api.sse import Encode, EventStreamResponse
from meshgate.errors import InvalidRequest, UnsupportedParameter
from meshgate.protocol import ChatCompletionRequest


class CompletionRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/completions: every field of the SDK's `CompletionCreateParams`."""

    model: str
    prompt: str | list[Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: Annotated[int, Meta(ge=0)] | None = None
    best_of: int | None = None


_PASSED = (
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "user",
)


def _prompt(body: CompletionRequest) -> str:
    prompt = body.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if prompt is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    raise InvalidRequest(
        "Invalid value for 'prompt': meshgate takes one prompt, as a string (or a list of one string); "
        "several prompts and token-id prompts are not supported.",
        param="prompt",
        code="invalid_value",
    )


def _check_supported(body: CompletionRequest) -> None:
    refused = {
        "echo": bool(body.echo),
        "suffix": body.suffix is not None,
        "logprobs": body.logprobs is not None,
        "best_of": body.best_of not in (None, 1),
    }
    for name, given in refused.items():
        if given:
            raise UnsupportedParameter(
                f"Unsupported parameter: '{name}' is not supported with chat models on /v1/completions.",
                param=name,
            )


def _chat_request(body: CompletionRequest) -> ChatCompletionRequest:
    _check_supported(body)
    chat: dict[str, Any] = {"model": body.model, "messages": [{"role": "user", "content": _prompt(body)}]}
    for name in _PASSED:
        if getattr(body, name) is not None:
            chat[name] = getattr(body, name)
    if body.stream:
        chat["stream"] = True
        if body.stream_options is not None:
            chat["stream_options"] = body.stream_options
    try:
        return msgspec.convert(chat, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None


def _choice(choice: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "text": text,
        "index": choice.get("index", 0),
        "logprobs": None,
        "finish_reason": choice.get("finish_reason"),
    }


def _chunk_encoder(completion_id: str, model: str, created: int, include_usage: bool) -> Encode:
    def encode(chunk: dict[str, Any]) -> bytes | None:
        choices = chunk.get("choices") or []
        if not choices and not include_usage:
            return None  # the usage-only chunk the gateway asked for for its own accounting
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [_choice(c, str((c.get("delta") or {}).get("content") or "")) for c in choices],
        }
        if include_usage:
            out["usage"] = chunk.get("usage")
        return b"data: " + encode_json(out) + b"\n\n"

    return encode


async def completions(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await decode_request(request, CompletionRequest, runtime.settings.max_body_bytes)
    chat = _chat_request(body)
    call = new_call(request, "chat.completions", chat)
    completion_id, created = "cmpl-" + uuid.uuid4().hex, int(time.time())
    if not chat.stream:
        result = await unless_disconnected(request, runtime.pipeline.complete(call))
        choices = [_choice(c, str((c.get("message") or {}).get("content") or "")) for c in result.get("choices") or []]
        return JSONBytesResponse(
            {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": choices,
                "usage": result.get("usage"),
            },
            headers=call.response_headers,
        )
    return EventStreamResponse(  # type: ignore[return-value]
        lambda writer: runtime.pipeline.stream(call, writer),
        _chunk_encoder(completion_id, body.model, created, chat.wants_usage_chunk),
        failure_event(call),
        DONE,
        headers=call.response_headers,
    )


ROUTES = [Route("/v1/completions", completions, methods=["POST"])]
