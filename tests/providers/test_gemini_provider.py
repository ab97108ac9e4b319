"""The gemini provider against a fake Gemini API served on loopback (meshgate/testing/fake_gemini.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest

from meshgate.errors import ConfigError, InvalidRequest, Overloaded, RateLimited, UnsupportedParameter, UpstreamError
from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.base import CallContext, ProviderContext
from meshgate.providers.gemini import GeminiChat, GeminiConfig, GeminiEmbedding, map_error
from meshgate.testing.fake_gemini import TOOL_ARGS, FakeGemini
from tests.conftest import AppClient, make_runtime

KEY = "AIza-test-gemini-key-0123456789"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(required_key=KEY) as server:
        yield server


@pytest.fixture()
async def make_model(fake: FakeGemini, tmp_path: Path) -> AsyncIterator[Any]:
    models: list[Any] = []

    async def make(upstream: str = "echo", key: str = KEY, **extra: Any) -> Any:
        config = GeminiConfig.model_validate(
            {"name": "gem", "provider": "gemini", "model": upstream, "api_key": key, "base_url": fake.base_url} | extra
        )
        cls = GeminiEmbedding if config.kind == "embedding" else GeminiChat
        model = cls(config, ProviderContext(data_dir=tmp_path))
        await model.start()
        models.append(model)
        return model

    yield make
    for model in models:
        await model.close()


def req(messages: list[dict[str, Any]], **fields: Any) -> ChatCompletionRequest:
    return msgspec.convert({"model": "gem", "messages": messages, **fields}, ChatCompletionRequest)


async def collect(model: GeminiChat, request: ChatCompletionRequest, call: CallContext | None = None) -> list[Any]:
    return [chunk async for chunk in model.stream(request, call or CallContext("r1"))]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


HELLO = [{"role": "user", "content": "hello there world"}]
WEATHER_TOOL = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


async def test_plain_completion_and_wire(make_model: Any, fake: FakeGemini) -> None:
    model = await make_model()
    call = CallContext("r1")
    result = await model.complete(req(HELLO), call)
    choice = result["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: hello there world", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert result["object"] == "chat.completion" and result["model"] == "gem"
    # The fake counts words + 3 per content as input, words of the answer as output.
    assert result["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (call.prompt_tokens, call.completion_tokens) == (6, 4)
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/echo:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY and sent.query == {}
    assert "authorization" not in {k.lower() for k in sent.headers}
    assert sent.body == {"contents": [{"role": "user", "parts": [{"text": "hello there world"}]}]}


async def test_request_translation(make_model: Any, fake: FakeGemini) -> None:
    model = await make_model()
    request = req(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            },
        ],
        stop=["END", "STOP"],
        temperature=1.5,
        top_p=0.9,
        max_completion_tokens=50,
        seed=42,
        presence_penalty=0.5,
        response_format={"type": "json_object"},
        tools=[
            {"type": "function", "function": {"name": "look", "description": "Look", "parameters": {"type": "object"}}}
        ],
        tool_choice={"type": "function", "function": {"name": "look"}},
    )
    await model.complete(request, CallContext("r1"))
    body = fake.requests[-1].body
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nUse French."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1]["parts"] == [{"text": "Hello."}]
    assert body["contents"][2]["parts"] == [
        {"text": "what is this"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
    ]
    assert body["generationConfig"] == {
        "stopSequences": ["END", "STOP"],
        "temperature": 1.5,
        "topP": 0.9,
        "maxOutputTokens": 50,
        "seed": 42,
        "presencePenalty": 0.5,
        "responseMimeType": "application/json",
    }
    assert body["tools"] == [
        {"functionDeclarations": [{"name": "look", "description": "Look", "parametersJsonSchema": {"type": "object"}}]}
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["look"]}}

    count = len(fake.requests)
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    with pytest.raises(UnsupportedParameter):
        await model.complete(req([{"role": "user", "content": remote}]), CallContext("r"))
    with pytest.raises(UnsupportedParameter):
        await model.complete(req(HELLO, tools=WEATHER_TOOL, parallel_tool_calls=False), CallContext("r"))
    assert len(fake.requests) == count  # refused before any call


async def test_tool_calls_get_stable_ids(make_model: Any) -> None:
    model = await make_model("tool:weather")
    result = await model.complete(req(HELLO, tools=WEATHER_TOOL), CallContext("r"))
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    calls = choice["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_0", "call_1"]
    assert all(c["type"] == "function" and c["function"]["name"] == "weather" for c in calls)
    assert [json.loads(c["function"]["arguments"]) for c in calls] == TOOL_ARGS


async def test_tool_result_round_trip(make_model: Any, fake: FakeGemini) -> None:
    tool_model = await make_model("tool:weather")
    answer = (await tool_model.complete(req(HELLO, tools=WEATHER_TOOL), CallContext("r")))["choices"][0]["message"]
    model = await make_model()
    messages = [
        *HELLO,
        answer,
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'},
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
    ]
    result = await model.complete(req(messages, tools=WEATHER_TOOL), CallContext("r"))  # the fake checks the pairing
    contents = fake.requests[-1].body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[1]["parts"] == [
        {"text": "Let me check."},
        {"functionCall": {"name": "weather", "args": TOOL_ARGS[0]}},
        {"functionCall": {"name": "weather", "args": TOOL_ARGS[1]}},
    ]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "weather", "response": {"temp": 20}}},
        {"functionResponse": {"name": "weather", "response": {"output": "sunny"}}},
    ]
    assert result["choices"][0]["message"]["content"].startswith("results: ")

    # Results map back to their calls' names through the ids, whatever their order.
    two = {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
            {"id": "call_1", "type": "function", "function": {"name": "clock", "arguments": '{"tz": "CET"}'}},
        ],
    }
    results = [{"role": "tool", "tool_call_id": i, "content": t} for i, t in (("call_1", "noon"), ("call_0", "rain"))]
    await model.complete(req([*HELLO, two, *results]), CallContext("r"))
    parts = fake.requests[-1].body["contents"][2]["parts"]
    assert [(p["functionResponse"]["name"], p["functionResponse"]["response"]["output"]) for p in parts] == [
        ("clock", "noon"),
        ("weather", "rain"),
    ]
    with pytest.raises(InvalidRequest, match="call_9"):
        await model.complete(
            req([*HELLO, two, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]), CallContext("r")
        )


async def test_finish_reasons(make_model: Any) -> None:
    model = await make_model()
    result = await model.complete(req([{"role": "user", "content": "a b c d e"}], max_tokens=3), CallContext("r"))
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["choices"][0]["message"]["content"] == "echo: a b"
    assert result["usage"]["completion_tokens"] == 3
    result = await model.complete(req([{"role": "user", "content": "one two END three"}], stop="END"), CallContext("r"))
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["choices"][0]["message"]["content"] == "echo: one two "
    chunks = await collect(model, req([{"role": "user", "content": "a b c d e"}], max_tokens=2))
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    for upstream in ("safety", "blocked"):
        filtered = await make_model(upstream)
        result = await filtered.complete(req(HELLO), CallContext("r"))
        assert result["choices"][0]["finish_reason"] == "content_filter", upstream
        assert result["choices"][0]["message"]["content"] == ""
        chunks = await collect(filtered, req(HELLO))
        assert chunks[-2]["choices"][0]["finish_reason"] == "content_filter", upstream


async def test_stream_text(make_model: Any, fake: FakeGemini) -> None:
    model = await make_model()
    call = CallContext("r1")
    chunks = await collect(model, req(HELLO), call)
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/echo:streamGenerateContent" and sent.query == {"alt": "sse"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert text_of(chunks) == "echo: hello there world"
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 4
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (call.prompt_tokens, call.completion_tokens) == (6, 4)


async def test_stream_tool_calls(make_model: Any) -> None:
    model = await make_model("tool:weather")
    chunks = await collect(model, req(HELLO, tools=WEATHER_TOOL))
    calls = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert [(d["index"], d["id"], d["function"]["name"]) for d in calls] == [
        (0, "call_0", "weather"),
        (1, "call_1", "weather"),
    ]
    assert [json.loads(d["function"]["arguments"]) for d in calls] == TOOL_ARGS
    assert text_of(chunks) == "Let me check."
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 3 + 10


@pytest.mark.parametrize(
    ("upstream", "key", "error", "status", "retry_after"),
    [
        ("echo", "wrong-key", UpstreamError, 502, None),  # 400 INVALID_ARGUMENT + ErrorInfo API_KEY_INVALID
        ("fail:400", KEY, InvalidRequest, 400, None),
        ("fail:403", KEY, UpstreamError, 502, None),
        ("fail:404", KEY, UpstreamError, 502, None),
        ("fail:429", KEY, RateLimited, 429, 7),
        ("fail:503", KEY, Overloaded, 503, 1),
        ("fail:500", KEY, UpstreamError, 502, None),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
async def test_error_mapping(
    make_model: Any, upstream: str, key: str, error: type, status: int, retry_after: int | None, streamed: bool
) -> None:
    model = await make_model(upstream, key=key)
    with pytest.raises(error) as caught:
        if streamed:
            await collect(model, req(HELLO))
        else:
            await model.complete(req(HELLO), CallContext("r"))
    assert type(caught.value) is error and caught.value.status == status
    if retry_after is not None:
        assert caught.value.headers() == {"retry-after": str(retry_after)}
    if error is UpstreamError:
        assert caught.value.upstream_status == (400 if key != KEY else int(upstream[5:]))
    if key != KEY:
        assert "api_key" in caught.value.message


def test_map_error_falls_back_to_http_status() -> None:
    """Without Google's status (a proxy's HTML page), the HTTP status decides."""
    assert type(map_error("g", 429, "", "", {"retry-after": "3"})) is RateLimited
    assert map_error("g", 429, "", "", {"retry-after": "3"}).headers() == {"retry-after": "3"}
    assert type(map_error("g", 503, "", "")) is Overloaded
    assert type(map_error("g", 400, "", "")) is InvalidRequest
    assert map_error("g", 504, "", "").status == 504
    # Google's status wins over the HTTP status, and the message text decides nothing.
    assert type(map_error("g", 500, "RESOURCE_EXHAUSTED", "invalid argument")) is RateLimited


async def test_mid_stream_error_event(make_model: Any) -> None:
    model = await make_model("streamerror")
    seen: list[dict[str, Any]] = []
    with pytest.raises(Overloaded):
        async for chunk in model.stream(req(HELLO), CallContext("r")):
            seen.append(chunk)
    assert seen[0]["choices"][0]["delta"]["role"] == "assistant"
    assert seen[-1]["choices"][0]["delta"] == {"content": "echo:"}


async def test_batch_embeddings(make_model: Any, fake: FakeGemini) -> None:
    model = await make_model("text-embedding-004", kind="embedding")
    assert model.profile.embeddings and not model.profile.chat
    call = CallContext("r")
    result = await model.embed(["hi", "hello world"], call)
    assert result.vectors == [[float(2 + i) for i in range(8)], [float(11 + i) for i in range(8)]]
    assert result.prompt_tokens == call.prompt_tokens == 1 + 3
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.body == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hi"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello world"}]}},
        ]
    }
    result = await model.embed(["hi"], CallContext("r"), dimensions=3)
    assert result.vectors == [[2.0, 3.0, 4.0]]
    assert fake.requests[-1].body["requests"][0]["outputDimensionality"] == 3
    failing = await make_model("fail:429", kind="embedding")
    with pytest.raises(RateLimited):
        await failing.embed(["hi"], CallContext("r"))


async def test_key_sent_as_header_never_logged(
    make_model: Any, fake: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    model = await make_model()
    failing = await make_model("fail:500")
    await model.complete(req(HELLO), CallContext("r"))
    await collect(model, req(HELLO))
    with pytest.raises(UpstreamError) as caught:
        await failing.complete(req(HELLO), CallContext("r"))
    for sent in fake.requests[-3:]:
        assert sent.headers["x-goog-api-key"] == KEY
        assert KEY not in sent.path and "key" not in sent.query
    assert KEY not in str(caught.value) and KEY not in repr(model.config)
    assert KEY not in caplog.text


async def test_unreachable_is_upstream_error(tmp_path: Path) -> None:
    config = GeminiConfig.model_validate(
        {"name": "g", "provider": "gemini", "model": "m", "api_key": KEY, "base_url": "http://127.0.0.1:9"}
    )
    model = GeminiChat(config, ProviderContext(data_dir=tmp_path))
    await model.start()
    try:
        with pytest.raises(UpstreamError, match="unreachable"):
            await model.complete(req(HELLO), CallContext("r"))
    finally:
        await model.close()


async def test_end_to_end_through_the_gateway(
    fake: FakeGemini, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_GEMINI_KEY", KEY)
    runtime = make_runtime(
        tmp_path,
        f"""
        models:
          - name: gem
            provider: gemini
            model: "tool:weather"
            base_url: {fake.base_url}
            api_key: ${{TEST_GEMINI_KEY}}
          - name: gem-embed
            provider: gemini
            kind: embedding
            model: text-embedding-004
            base_url: {fake.base_url}
            api_key: ${{TEST_GEMINI_KEY}}
        """,
    )
    client = await AppClient.started(runtime)
    sdk = openai.AsyncOpenAI(
        base_url="http://meshgate.test/v1", api_key=client.key or "unused", http_client=client.http, max_retries=0
    )
    try:
        tools: Any = WEATHER_TOOL
        messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "weather?"}]
        answer = await sdk.chat.completions.create(model="gem", messages=messages, tools=tools)
        assert answer.choices[0].finish_reason == "tool_calls"
        calls = answer.choices[0].message.tool_calls or []
        assert [c.id for c in calls] == ["call_0", "call_1"]
        assert json.loads(calls[1].function.arguments) == TOOL_ARGS[1]  # type: ignore[union-attr]
        assert fake.requests[-1].headers["x-goog-api-key"] == KEY
        assert fake.requests[-1].body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}

        stream = await sdk.chat.completions.create(
            model="gem", messages=messages, tools=tools, stream=True, stream_options={"include_usage": True}
        )
        ids, finish, usage = [], None, None
        async for chunk in stream:
            for choice in chunk.choices:
                ids += [d.id for d in choice.delta.tool_calls or () if d.id]
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        assert ids == ["call_0", "call_1"] and finish == "tool_calls"
        assert usage is not None and usage.completion_tokens == 13

        embeddings = await sdk.embeddings.create(model="gem-embed", input=["hi", "there"])
        assert [len(e.embedding) for e in embeddings.data] == [8, 8]

        with pytest.raises(openai.BadRequestError):  # one candidate only: refused, not dropped
            await sdk.chat.completions.create(model="gem", messages=messages, n=2)
        assert caplog.records and KEY not in caplog.text  # the gateway logs each call
    finally:
        await client.http.aclose()
        await runtime.stop()


def test_api_key_must_be_an_env_reference(tmp_path: Path) -> None:
    entry = "models:\n  - {name: g, provider: gemini, model: m, api_key: %s}\n"
    with pytest.raises(ConfigError, match="api_key: secrets are not written in the file"):
        make_runtime(tmp_path, entry % "AIza-literal")
    with pytest.raises(ConfigError, match="api_key"):
        make_runtime(tmp_path, "models:\n  - {name: g, provider: gemini, model: m}\n")
