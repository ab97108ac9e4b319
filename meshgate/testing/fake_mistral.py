"""A fake Mistral API (api.mistral.ai/v1) on loopback, speaking its documented wire format.

`POST /v1/chat/completions` and `POST /v1/embeddings` with `Authorization: Bearer KEY`. Fields
Mistral does not know (OpenAI's `seed`, `stream_options`, `max_completion_tokens`, ...) are a 422
`{"detail": [...]}`, as Mistral's validation answers. A stream's last chunk carries `usage`
beside its finish reason; there is no `stream_options`. The `model` picks the behaviour:

    echo               answers "echo: <last user message>" (any other name too)
    long               stops at the context: finish reason `model_length`
    fail:STATUS        answers HTTP STATUS with Mistral's error body (429 with Retry-After: 7;
                       422 with a `detail` list)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meshgate.testing.fake_azure import AppServedFake

CHAT_FIELDS = frozenset(
    [
        *("model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed"),
        *("metadata", "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty"),
        *("min_tokens", "repetition_penalty", "top_k", "logprobs", "top_logprobs", "prompt_logprobs"),
        *("top_prompt_logprobs", "n", "prediction", "parallel_tool_calls", "reasoning_effort", "prompt_mode"),
        *("guardrails", "prompt_cache_key", "service_tier", "safe_prompt"),
    ]
)
EMBEDDING_FIELDS = frozenset(["model", "input", "metadata", "output_dimension", "output_dtype", "encoding_format"])
TOOL_CHOICES = frozenset(("auto", "none", "any", "required"))


@dataclass
class MistralCall:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class MistralState:
    api_key: str | None = None
    calls: list[MistralCall] = field(default_factory=list)


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": None}
    return web.json_response(body, status=status, headers=headers)


def _validation(problems: list[dict[str, Any]]) -> web.Response:
    return web.json_response({"detail": problems}, status=422)


def _check(body: dict[str, Any], allowed: frozenset[str]) -> web.Response | None:
    problems = [
        {"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not permitted", "input": value}
        for name, value in body.items()
        if name not in allowed
    ]
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice not in TOOL_CHOICES:
        problems.append({"type": "enum", "loc": ["body", "tool_choice"], "msg": "bad tool_choice", "input": choice})
    return _validation(problems) if problems else None


def _fail(model: str) -> web.Response | None:
    if not model.startswith("fail:"):
        return None
    status = int(model[5:])
    if status == 422:
        return _validation([{"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": {}}])
    if status == 429:
        return _error(429, "Requests rate limit exceeded", "rate_limited", {"retry-after": "7"})
    if status == 401:
        return web.json_response({"message": "Unauthorized", "request_id": "fake"}, status=401)
    return _error(status, f"fake failure {status}", "invalid_request_error" if status < 500 else "internal_error")


def build_fake_mistral_app(state: MistralState) -> web.Application:
    async def authorized(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        body = await request.json()
        state.calls.append(MistralCall(request.path, dict(request.headers), body))
        if state.api_key is not None and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return None, web.json_response({"message": "Unauthorized", "request_id": "fake"}, status=401)
        return body, None

    async def chat(request: web.Request) -> web.StreamResponse:
        body, refused = await authorized(request)
        if refused is not None or body is None:
            return refused or _error(400, "no body", "invalid_request_error")
        model = str(body.get("model", ""))
        answer = _check(body, CHAT_FIELDS) or _fail(model)
        if answer is not None:
            return answer
        last = ""
        prompt_tokens = 0
        for message in body.get("messages") or []:
            prompt_tokens += len(str(message.get("content") or "").split()) + 3
            if message.get("role") == "user":
                last = str(message.get("content") or "")
        words = f"echo: {last}".split(" ")
        finish = "model_length" if model == "long" else "stop"
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        cid = "cmpl-" + hashlib.sha1(" ".join(words).encode()).hexdigest()[:32]
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "model": model,
                    "created": created,
                    "usage": usage,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words), "tool_calls": None},
                            "finish_reason": finish,
                        }
                    ],
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], reason: str | None = None, last: bool = False) -> None:
            chunk: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
            if last:
                chunk["usage"] = usage
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await send({"role": "assistant", "content": ""})
        for index, word in enumerate(words):
            await send({"content": word + (" " if index < len(words) - 1 else "")})
        await send({"content": ""}, finish, last=True)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(request: web.Request) -> web.Response:
        body, refused = await authorized(request)
        if refused is not None or body is None:
            return refused or _error(400, "no body", "invalid_request_error")
        answer = _check(body, EMBEDDING_FIELDS) or _fail(str(body.get("model", "")))
        if answer is not None:
            return answer
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not all(isinstance(text, str) for text in texts):
            return _validation([{"type": "string_type", "loc": ["body", "input"], "msg": "Input should be a string"}])
        dims = int(body.get("output_dimension") or 1024)
        data = []
        for index, text in enumerate(texts):
            digest = hashlib.sha256(text.encode()).digest()
            data.append(
                {"object": "embedding", "index": index, "embedding": [digest[i % 32] / 255 for i in range(dims)]}
            )
        tokens = sum(len(text.split()) for text in texts)
        return web.json_response(
            {
                "id": "embd-fake",
                "object": "list",
                "model": body.get("model"),
                "data": data,
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


class FakeMistral(AppServedFake):
    """`with FakeMistral(api_key=...) as fake: fake.base_url` (ends in /v1)."""

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.mistral = MistralState(api_key=api_key)

    @property
    def calls(self) -> list[MistralCall]:
        return self.mistral.calls

    def _app(self) -> web.Application:
        return build_fake_mistral_app(self.mistral)
