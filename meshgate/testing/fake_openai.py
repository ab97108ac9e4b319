"""A fake OpenAI-compatible upstream: a real HTTP server on loopback, for tests and benchmarks.

It speaks OpenAI's documented wire format (chat completions, SSE chunks with `data: [DONE]`,
`stream_options.include_usage`, embeddings, error bodies), and misbehaves on request. The upstream
model name picks the behaviour, so one server backs many mesh.yaml entries:

    echo                 answers "echo: <last user message>" (default for any other name)
    slow:SECONDS         waits before answering (and before the first stream event)
    paced:MS:COUNT       streams COUNT chunks MS milliseconds apart
    fail:STATUS          answers HTTP STATUS with an OpenAI error body
    cut:N                streams N chunks, then drops the connection without [DONE]
    hang                 accepts the request and never answers
    badjson              answers 200 with a body that is not JSON

Run it alone with `python -m meshgate.testing.fake_openai --port 18080`; in tests, use
`FakeOpenAI()` as a context manager: it serves from a background thread and records requests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeState:
    requests: list[Recorded] = field(default_factory=list)
    required_key: str | None = None


def _error(status: int, message: str, kind: str = "server_error") -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


def _words(messages: list[dict[str, Any]]) -> tuple[str, int]:
    last = ""
    prompt_tokens = 0
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        prompt_tokens += len(str(content).split()) + 3
        if message.get("role") == "user":
            last = str(content)
    return last, prompt_tokens


def _chunk(cid: str, model: str, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fake",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def build_fake_app(state: FakeState) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "bad json", "invalid_request_error")
        state.requests.append(Recorded(request.path, dict(request.headers), body))
        if state.required_key is not None and request.headers.get("authorization") != f"Bearer {state.required_key}":
            return _error(401, "Incorrect API key provided", "invalid_request_error")
        model = str(body.get("model", "echo"))
        behaviour, _, arg = model.partition(":")
        if behaviour == "hang":
            await asyncio.sleep(3600)
        if behaviour == "slow":
            await asyncio.sleep(float(arg or 1))
        if behaviour == "fail":
            status = int(arg or 500)
            return _error(status, f"fake failure {status}", "invalid_request_error" if status < 500 else "server_error")
        if behaviour == "badjson":
            return web.Response(text="<html>oops</html>", content_type="application/json")
        last, prompt_tokens = _words(body.get("messages") or [])
        text = f"echo: {last}"
        pieces = text.split(" ")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces, finish = pieces[:max_tokens], "length"
        cid = "chatcmpl-fake" + hashlib.sha1(text.encode()).hexdigest()[:12]
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(pieces), "refusal": None},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(pieces),
                        "total_tokens": prompt_tokens + len(pieces),
                    },
                }
            )
        interval = 0.0
        if behaviour == "paced":
            ms, _, count = arg.partition(":")
            interval = float(ms or 20) / 1000
            pieces = [f"tok{i} " for i in range(int(count or 20))]
        else:
            pieces = [p + (" " if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)]
        cut_after = int(arg or 1) if behaviour == "cut" else None
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def send(chunk: dict[str, Any]) -> None:
            if include_usage:
                chunk["usage"] = None
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await send(_chunk(cid, model, {"role": "assistant", "content": ""}))
        for index, piece in enumerate(pieces):
            if cut_after is not None and index >= cut_after:
                assert request.transport is not None
                request.transport.abort()  # drop the connection mid-stream, no [DONE]
                return response
            if interval:
                await asyncio.sleep(interval)
            await send(_chunk(cid, model, {"content": piece}))
        await send(_chunk(cid, model, {}, finish))
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(pieces),
                "total_tokens": prompt_tokens + len(pieces),
            }
            await response.write(
                b"data: " + json.dumps({**_chunk(cid, model, None), "usage": usage}).encode() + b"\n\n"
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        state.requests.append(Recorded(request.path, dict(request.headers), body))
        model = str(body.get("model", "echo"))
        if model.startswith("fail:"):
            return _error(int(model[5:]), "fake failure")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dims = int(body.get("dimensions") or 8)
        data = []
        for index, text in enumerate(texts):
            digest = hashlib.sha256(str(text).encode()).digest()
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": [(digest[i % 32] - 128) / 128 for i in range(dims)],
                }
            )
        tokens = sum(len(str(t).split()) for t in texts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "fake"}]}
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app


class FakeOpenAI:
    """The fake upstream served from a background thread: `with FakeOpenAI() as fake: fake.base_url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, required_key: str | None = None) -> None:
        self.host, self.port = host, port
        self.state = FakeState(required_key=required_key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(build_fake_app(self.state), handle_signals=False, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port)
        loop.run_until_complete(site.start())
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._runner = runner
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def __enter__(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def main() -> None:  # pragma: no cover - a command for manual runs and benchmarks
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    args = parser.parse_args()
    web.run_app(build_fake_app(FakeState(required_key=args.api_key)), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":  # pragma: no cover
    main()
