"""A fake Cohere v2 API: a real HTTP server on loopback, for tests.

It speaks Cohere's v2 wire format (as the `cohere` SDK's v2 types describe it): `POST /v2/chat` and
`POST /v2/embed` with the key as `authorization: Bearer`; a chat answer `{id, finish_reason,
message: {role, content: [{type: text, text}], tool_plan, tool_calls}, usage: {billed_units,
tokens}}`; SSE streams of typed events (message-start, content-start, content-delta, content-end,
tool-plan-delta, tool-call-start, tool-call-delta, tool-call-end, message-end), each `data:` a JSON
object carrying its `type`; embeddings `{id, embeddings: {float: [...]}, texts, meta: {billed_units}}`;
error bodies `{"message": ...}`. It checks the request's shape as the real API does: unknown fields,
roles, and every tool message answering a tool call of the assistant turn before it.
The upstream model name picks the behaviour:

    echo                 answers "echo: <last user text>", honouring max_tokens (words) and stop_sequences
    billed               like echo, but its usage has billed_units only
    tool:NAME            a tool plan and a call of tool NAME, its arguments streamed in pieces
    fail:STATUS          answers HTTP STATUS (retry-after on 429 and 503)
    error                streams a little text, then ends with finish_reason ERROR
    embed                embeddings of 8 dimensions that depend on the text and the input_type

Use `FakeCohere()` as a context manager: it serves from a background thread and records requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshgate.testing.fake_server import FakeServer, FakeState

#: The input of the fake tool call, and the pieces its JSON is streamed in.
TOOL_INPUT = {"city": "Paris, France", "units": "celsius", "days": [1, 2, 3], "note": 'say "hi" \u00e9'}
TOOL_PLAN = "I will look up the weather."
EMBED_DIMENSIONS = 8
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")

CHAT_FIELDS = {
    "model",
    "messages",
    "tools",
    "strict_tools",
    "documents",
    "citation_options",
    "response_format",
    "safety_mode",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "k",
    "p",
    "logprobs",
    "tool_choice",
    "thinking",
    "stream",
}
EMBED_FIELDS = {"model", "texts", "images", "inputs", "input_type", "embedding_types", "output_dimension", "truncate"}


def tool_json_pieces() -> list[str]:
    text = json.dumps(TOOL_INPUT)
    return [text[i : i + 7] for i in range(0, len(text), 7)]


def fake_vector(text: str, input_type: str) -> list[float]:
    digest = hashlib.sha256(f"{input_type}\0{text}".encode()).digest()
    return [round(b / 255, 6) for b in digest[:EMBED_DIMENSIONS]]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"id": str(uuid.uuid4()), "message": message}, status=status, headers=headers)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content or () if isinstance(b, dict) and b.get("type") == "text")


def _check_chat(body: dict[str, Any]) -> str | None:
    """What the real API would reject in a chat request, or None."""
    unknown = sorted(set(body) - CHAT_FIELDS)
    if unknown:
        return f"invalid request: unknown field: parameter {unknown[0]} is not a valid field"
    if not isinstance(body.get("model"), str):
        return "invalid request: model must be a string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "invalid request: messages must be a non-empty list"
    pending: set[str] = set()
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            return f"invalid request: messages[{index}].role must be system, user, assistant or tool"
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return f"invalid request: messages[{index}].tool_call_id does not answer a tool call"
            pending.discard(message["tool_call_id"])
            continue
        if pending:
            return f"invalid request: tool calls {sorted(pending)} were not answered by tool messages"
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if not message.get("content") and not calls:
                return f"invalid request: messages[{index}] must have content or tool_calls"
            for call in calls:
                if not isinstance(call.get("function", {}).get("arguments"), str):
                    return f"invalid request: messages[{index}].tool_calls: arguments must be a string"
            pending = {str(call.get("id")) for call in calls}
        elif not isinstance(message.get("content"), str | list):
            return f"invalid request: messages[{index}].content is required"
    for tool in body.get("tools") or ():
        if tool.get("type") != "function" or not isinstance(tool.get("function", {}).get("name"), str):
            return "invalid request: tools must be function tools with a name"
    if "p" in body and not 0.01 <= body["p"] <= 0.99:
        return "invalid request: p must be between 0.01 and 0.99"
    if body.get("tool_choice") not in (None, "REQUIRED", "NONE"):
        return "invalid request: tool_choice must be REQUIRED or NONE"
    return None


def _input_tokens(body: dict[str, Any]) -> int:
    return sum(len(_text_of(m.get("content")).split()) + 3 for m in body["messages"])


def build_fake_app(state: FakeState) -> web.Application:
    async def parse(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "invalid request: could not parse the body")
        state.requests.append(Recorded(request.path, dict(request.headers), body))
        if state.required_key is not None and request.headers.get("authorization") != f"Bearer {state.required_key}":
            return _error(401, "invalid api token")
        if not isinstance(body, dict):
            return _error(400, "invalid request: the body must be an object")
        behaviour, _, arg = str(body.get("model", "")).partition(":")
        if behaviour == "fail":
            status = int(arg or 500)
            headers = {"retry-after": "7"} if status in (429, 503) else {}
            return _error(status, f"fake failure {status}", headers=headers)
        return body

    async def embed(request: web.Request) -> web.Response:
        body = await parse(request)
        if isinstance(body, web.Response):
            return body
        unknown = sorted(set(body) - EMBED_FIELDS)
        if unknown:
            return _error(400, f"invalid request: unknown field: parameter {unknown[0]} is not a valid field")
        if body.get("input_type") not in INPUT_TYPES:
            return _error(400, "invalid request: valid input_type must be provided with the provided model")
        texts = body.get("texts")
        if not isinstance(texts, list) or not 1 <= len(texts) <= 96 or not all(isinstance(t, str) for t in texts):
            return _error(400, "invalid request: texts must be a list of 1 to 96 strings")
        if body.get("embedding_types", ["float"]) != ["float"]:
            return _error(422, "the fake serves float embeddings only")
        return web.json_response(
            {
                "id": str(uuid.uuid4()),
                "response_type": "embeddings_by_type",
                "embeddings": {"float": [fake_vector(t, body["input_type"]) for t in texts]},
                "texts": texts,
                "meta": {
                    "api_version": {"version": "2"},
                    "billed_units": {"input_tokens": sum(len(t.split()) for t in texts)},
                },
            }
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await parse(request)
        if isinstance(body, web.Response):
            return body
        problem = _check_chat(body)
        if problem is not None:
            return _error(400, problem)
        behaviour, _, arg = body["model"].partition(":")
        input_tokens = _input_tokens(body)
        message: dict[str, Any] = {"role": "assistant"}
        if behaviour == "tool":
            call = {
                "id": f"{arg}_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": arg, "arguments": json.dumps(TOOL_INPUT)},
            }
            message |= {"tool_plan": TOOL_PLAN, "tool_calls": [call]}
            finish_reason, output_tokens = "TOOL_CALL", 9
        else:
            last = next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})
            text = "echo: " + _text_of(last["content"])
            finish_reason = "COMPLETE"
            for sequence in body.get("stop_sequences") or ():
                if sequence in text:
                    text, finish_reason = text[: text.index(sequence)], "STOP_SEQUENCE"
            words = text.split(" ")
            if body.get("max_tokens") is not None and len(words) > body["max_tokens"]:
                words, finish_reason = words[: body["max_tokens"]], "MAX_TOKENS"
            text = " ".join(words)
            message["content"] = [{"type": "text", "text": text}]
            output_tokens = len(words)
            if behaviour == "error":
                finish_reason = "ERROR"
        usage: dict[str, Any] = {
            "billed_units": {"input_tokens": input_tokens - 1, "output_tokens": output_tokens},
            "tokens": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        if behaviour == "billed":
            del usage["tokens"]
        answer_id = str(uuid.uuid4())
        if not body.get("stream"):
            answer = {"id": answer_id, "finish_reason": finish_reason, "message": message, "usage": usage}
            return web.json_response(answer)

        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode())

        await send("message-start", {"id": answer_id, "delta": {"message": {"role": "assistant"}}})
        if "tool_plan" in message:
            for word in TOOL_PLAN.split(" "):
                await send("tool-plan-delta", {"delta": {"message": {"tool_plan": word + " "}}})
        for index, call in enumerate(message.get("tool_calls") or ()):
            started = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            await send("tool-call-start", {"index": index, "delta": {"message": {"tool_calls": started}}})
            for piece in tool_json_pieces():
                delta = {"message": {"tool_calls": {"function": {"arguments": piece}}}}
                await send("tool-call-delta", {"index": index, "delta": delta})
            await send("tool-call-end", {"index": index})
        for index, item in enumerate(message.get("content") or ()):
            start = {"message": {"content": {"type": "text", "text": ""}}}
            await send("content-start", {"index": index, "delta": start})
            for position, word in enumerate(item["text"].split(" ")):
                piece = word if position == 0 else " " + word
                await send("content-delta", {"index": index, "delta": {"message": {"content": {"text": piece}}}})
                await asyncio.sleep(0)
            await send("content-end", {"index": index})
        end: dict[str, Any] = {"finish_reason": finish_reason, "usage": usage}
        if finish_reason == "ERROR":
            end["error"] = "internal generation error"
        await send("message-end", {"id": answer_id, "delta": end})
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v2/chat", chat)
    app.router.add_post("/v2/embed", embed)
    return app


class FakeCohere(FakeServer):
    """The fake served from a background thread: `with FakeCohere() as fake: fake.base_url`."""

    thread_name = "fake-cohere"

    def build_app(self) -> web.Application:
        return build_fake_app(self.state)

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests
