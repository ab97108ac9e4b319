"""A fake Gemini API: a real HTTP server on loopback, for tests.

It speaks Google's documented REST wire format: `POST /v1beta/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse` (SSE `data:` events, each a partial GenerateContentResponse, the last
with `finishReason`; `usageMetadata` on every event) and `:batchEmbedContents`, the key in
`x-goog-api-key` (or `?key=`); error bodies `{"error": {"code", "message", "status", "details"}}`.
Like the real API it answers a wrong key with 400 INVALID_ARGUMENT and an ErrorInfo reason
API_KEY_INVALID, and checks the request's shape: roles are `user` and `model` only, and every model
turn's function calls are answered, name for name, by the functionResponse parts of the next user turn.
The upstream model name picks the behaviour:

    echo                 answers "echo: <last user text>", honouring maxOutputTokens (words) and stopSequences;
                         after function responses it answers "results: <their JSON>"
    tool:NAME            answers "Let me check." and two calls of function NAME (no ids, as Gemini sends them)
    fail:STATUS          answers HTTP STATUS with Google's status for it (RetryInfo 7s on 429)
    safety               answers no text and finishReason SAFETY
    blocked              answers no candidate and promptFeedback.blockReason SAFETY
    streamerror          streams a little text, then an `error` event (UNAVAILABLE)
    anything, embedding  :batchEmbedContents answers vectors of outputDimensionality (default 8)

Use `FakeGemini()` as a context manager: it serves from a background thread and records requests.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshgate.testing.fake_server import FakeServer, FakeState

#: Google's status for each HTTP status it uses.
STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

#: The arguments of the fake's function calls.
TOOL_ARGS = [{"city": "Paris", "note": 'say "hi" \u00e9'}, {"city": "Rome", "days": [1, 2]}]


@dataclass
class Recorded:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    error = {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status)


def _text_of(parts: list[dict[str, Any]]) -> str:
    return " ".join(str(p["text"]) for p in parts if isinstance(p.get("text"), str))


def _check(body: dict[str, Any]) -> str | None:
    """What the real API would reject in the request, or None."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    pending: list[str] = []
    for index, content in enumerate(contents):
        role = content.get("role")
        if role not in ("user", "model"):
            return f"Please use a valid role: user, model. (contents[{index}])"
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{index}].parts: contents.parts must not be empty."
        answered = [str(p["functionResponse"]["name"]) for p in parts if "functionResponse" in p]
        if pending and (role != "user" or sorted(answered) != sorted(pending)):
            return (
                "Please ensure that the number of function response parts is equal to the number of function "
                "call parts of the function call turn."
            )
        if answered and not pending:
            return f"contents[{index}]: a function response turn must come right after a function call turn"
        pending = [str(p["functionCall"]["name"]) for p in parts if "functionCall" in p] if role == "model" else []
        for part in parts:
            if "functionResponse" in part and not isinstance(part["functionResponse"].get("response"), dict):
                return f"contents[{index}]: functionResponse.response must be an object"
    if pending:
        return "the last turn's function calls are not answered"
    config = body.get("generationConfig") or {}
    if len(config.get("stopSequences") or ()) > 5:
        return "* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences"
    return None


def _prompt_tokens(body: dict[str, Any]) -> int:
    words = len(_text_of((body.get("systemInstruction") or {}).get("parts") or []).split())
    for content in body["contents"]:
        words += len(_text_of(content["parts"]).split()) + 3
    return words


def _usage(prompt: int, output: int) -> dict[str, int]:
    return {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output}


def build_fake_app(state: FakeState) -> web.Application:
    async def call(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "Invalid JSON payload received.")
        state.requests.append(Recorded(request.path, dict(request.query), dict(request.headers), body))
        model, _, method = request.match_info["rest"].rpartition(":")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if state.required_key is not None and key != state.required_key:
            info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            return _error(400, "API key not valid. Please pass a valid API key.", [info])
        behaviour, _, arg = model.partition(":")
        if behaviour == "fail":
            status = int(arg or 500)
            details = (
                [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}] if status == 429 else []
            )
            return _error(status, f"fake failure {status}", details)
        if method == "batchEmbedContents":
            return _embed(model, body)
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, f"Method {method} not found")
        problem = _check(body)
        if problem is not None:
            return _error(400, problem)
        stream = method == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            return _error(400, "the fake streams SSE only (alt=sse)")
        prompt = _prompt_tokens(body)
        config = body.get("generationConfig") or {}
        parts: list[dict[str, Any]] = []
        answer: dict[str, Any] = {}
        reason = "STOP"
        if behaviour == "tool":
            parts = [{"text": "Let me check."}] + [{"functionCall": {"name": arg, "args": a}} for a in TOOL_ARGS]
        elif behaviour == "safety":
            reason = "SAFETY"
        elif behaviour == "blocked":
            answer = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": _usage(prompt, 0)}
        else:
            last = body["contents"][-1]["parts"]
            responses = [p["functionResponse"] for p in last if "functionResponse" in p]
            text = "results: " + json.dumps(responses) if responses else "echo: " + _text_of(last)
            for sequence in config.get("stopSequences") or ():
                if sequence in text:
                    text = text[: text.index(sequence)]
            words = text.split(" ")
            limit = config.get("maxOutputTokens")
            if isinstance(limit, int) and len(words) > limit:
                words, reason = words[:limit], "MAX_TOKENS"
            parts = [{"text": " ".join(words)}]
        output = sum(len(str(p.get("text", "")).split()) for p in parts) + 5 * sum("functionCall" in p for p in parts)
        if not answer:
            candidate: dict[str, Any] = {"finishReason": reason, "index": 0}
            if parts:
                candidate["content"] = {"role": "model", "parts": parts}
            answer = {"candidates": [candidate], "usageMetadata": _usage(prompt, output), "modelVersion": model}
        if not stream:
            return web.json_response(answer)

        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(data: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(data)}\r\n\r\n".encode())

        pieces: list[dict[str, Any]] = []
        for part in parts:
            if "text" in part:
                words = part["text"].split(" ")
                pieces.extend({"text": w if i == 0 else " " + w} for i, w in enumerate(words))
            else:
                pieces.append(part)
        sent = 0
        for position, piece in enumerate(pieces):
            sent += len(str(piece.get("text", "")).split()) + (5 if "functionCall" in piece else 0)
            event: dict[str, Any] = {
                "candidates": [{"content": {"role": "model", "parts": [piece]}, "index": 0}],
                "usageMetadata": _usage(prompt, sent),
            }
            if position == len(pieces) - 1:
                event["candidates"][0]["finishReason"] = reason
            await send(event)
            if behaviour == "streamerror":
                await asyncio.sleep(0)
                await send({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
                await response.write_eof()
                return response
        if not pieces:
            await send(answer)
        await response.write_eof()
        return response

    def _embed(model: str, body: dict[str, Any]) -> web.Response:
        vectors = []
        for index, entry in enumerate(body.get("requests") or ()):
            if entry.get("model") != f"models/{model}":
                return _error(400, f"requests[{index}].model must be models/{model}")
            text = _text_of((entry.get("content") or {}).get("parts") or [])
            size = int(entry.get("outputDimensionality") or 8)
            vectors.append({"values": [float(len(text) + i) for i in range(size)]})
        if not vectors:
            return _error(400, "* BatchEmbedContentsRequest.requests: at least one request is required")
        return web.json_response({"embeddings": vectors})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1beta/models/{rest}", call)
    return app


class FakeGemini(FakeServer):
    """The fake served from a background thread: `with FakeGemini() as fake: fake.base_url`."""

    thread_name = "fake-gemini"

    def build_app(self) -> web.Application:
        return build_fake_app(self.state)

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests
