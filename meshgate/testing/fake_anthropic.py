"""A fake Anthropic Messages API: a real HTTP server on loopback, for tests.

It speaks Anthropic's documented wire format: `POST /v1/messages` with the key in `x-api-key`
(or, as SDK 2.x sends it, `authorization: Bearer`) and an `anthropic-version` header; a `message`
answer; SSE streams of message_start, content_block_start, content_block_delta (text_delta,
input_json_delta), content_block_stop, message_delta, message_stop and ping events; error bodies
`{"type": "error", "error": {"type", "message"}}` with a `request-id` header. Like the real API it
checks the request's shape: `max_tokens` is required, roles are user and assistant only, and every
`tool_use` is answered by a `tool_result` of the same id in the next user turn.
The upstream model name picks the behaviour:

    echo                 answers "echo: <last user text>", honouring max_tokens (words) and stop_sequences
    tool:NAME            answers "Let me check." and a call of tool NAME, its input streamed in pieces
    fail:STATUS          answers HTTP STATUS with the error type Anthropic uses for it (retry-after on 429/529)
    streamerror          streams a little text, then an `error` event (overloaded_error)

Use `FakeAnthropic()` as a context manager: it serves from a background thread and records requests.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshgate.testing.fake_server import FakeServer, FakeState

#: API versions accepted: the long-standing one meshgate sends, and the one the installed SDK sends.
API_VERSIONS = ("2023-06-01", "2026-10-21")

#: Anthropic's error type for each status it documents.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

#: The input of the fake tool call, and the pieces its JSON is streamed in.
TOOL_INPUT = {"city": "Paris, France", "units": "celsius", "days": [1, 2, 3], "note": 'say "hi" \u00e9'}


def tool_json_pieces() -> list[str]:
    text = json.dumps(TOOL_INPUT)
    return [text[i : i + 7] for i in range(0, len(text), 7)]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _error(status: int, message: str, kind: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": kind or ERROR_TYPES.get(status, "api_error"), "message": message}}
    return web.json_response(body, status=status, headers={"request-id": "req_fake", **(headers or {})})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content or () if isinstance(b, dict) and b.get("type") == "text")


def _check(body: dict[str, Any]) -> str | None:
    """What the real API would reject in the request, or None."""
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    pending: set[str] = set()
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f'messages.{index}.role: Input should be "user" or "assistant"'
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return f"messages.{index}.content: invalid"
        results = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if pending and (role != "user" or results != pending):
            return f"messages.{index}: tool_use ids were found without tool_result blocks immediately after"
        if role == "user" and results - pending:
            return f"messages.{index}: unexpected tool_use_id found in tool_result blocks"
        pending = {str(b.get("id")) for b in blocks if b.get("type") == "tool_use"} if role == "assistant" else set()
        for block in blocks:
            if block.get("type") == "text" and not block.get("text"):
                return f"messages.{index}: text content blocks must be non-empty"
    if "temperature" in body and not 0 <= body["temperature"] <= 1:
        return "temperature: Input should be less than or equal to 1"
    return None


def _input_tokens(body: dict[str, Any]) -> int:
    system = body.get("system") or ""
    words = len(_text_of(system).split())
    for message in body["messages"]:
        words += len(_text_of(message["content"]).split()) + 3
    return words


def build_fake_app(state: FakeState) -> web.Application:
    async def messages(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "There was an error parsing the body")
        state.requests.append(Recorded(request.path, dict(request.headers), body))
        if state.required_key is not None and state.required_key not in (
            request.headers.get("x-api-key"),
            request.headers.get("authorization", "").removeprefix("Bearer "),
        ):
            return _error(401, "invalid x-api-key")
        if request.headers.get("anthropic-version") not in API_VERSIONS:
            return _error(400, "anthropic-version: header is required")
        problem = _check(body)
        if problem is not None:
            return _error(400, problem)
        model = body["model"]
        behaviour, _, arg = model.partition(":")
        if behaviour == "fail":
            status = int(arg or 500)
            headers = {"retry-after": "7"} if status in (429, 529) else {}
            return _error(status, f"fake failure {status}", headers=headers)
        input_tokens = _input_tokens(body)
        content: list[dict[str, Any]]
        stop_sequence = None
        if behaviour == "tool":
            content = [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], "name": arg, "input": TOOL_INPUT},
            ]
            stop_reason, output_tokens = "tool_use", 9
        else:
            last = next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})
            text = "echo: " + _text_of(last["content"])
            stop_reason = "end_turn"
            for sequence in body.get("stop_sequences") or ():
                if sequence in text:
                    text, stop_reason, stop_sequence = text[: text.index(sequence)], "stop_sequence", sequence
            words = text.split(" ")
            if len(words) > body["max_tokens"]:
                words, stop_reason, stop_sequence = words[: body["max_tokens"]], "max_tokens", None
            text = " ".join(words)
            content = [{"type": "text", "text": text}]
            output_tokens = len(words)
        message = {
            "id": "msg_" + uuid.uuid4().hex[:20],
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        if not body.get("stream"):
            return web.json_response(message, headers={"request-id": "req_fake"})

        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache", "request-id": "req_fake"}
        )
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode())

        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {"input_tokens": input_tokens, "output_tokens": 1}
        await send("message_start", {"message": start})
        await send("ping", {})
        for index, block in enumerate(content):
            if block["type"] == "text":
                await send("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                words = block["text"].split(" ")
                for position, word in enumerate(words):
                    piece = word if position == 0 else " " + word
                    await send("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
                    if behaviour == "streamerror":
                        await asyncio.sleep(0)
                        error = {"type": "overloaded_error", "message": "Overloaded"}
                        await send("error", {"error": error})
                        await response.write_eof()
                        return response
            else:
                started = {**block, "input": {}}
                await send("content_block_start", {"index": index, "content_block": started})
                for piece in tool_json_pieces():
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    await send("content_block_delta", {"index": index, "delta": delta})
            await send("content_block_stop", {"index": index})
        await send(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"output_tokens": output_tokens},
            },
        )
        await send("message_stop", {})
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/messages", messages)
    return app


class FakeAnthropic(FakeServer):
    """The fake served from a background thread: `with FakeAnthropic() as fake: fake.base_url`."""

    thread_name = "fake-anthropic"

    def build_app(self) -> web.Application:
        return build_fake_app(self.state)

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests
