"""The cohere provider against a fake Cohere v2 API served on loopback (meshgate/testing/fake_cohere.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest

from meshgate.errors import ConfigError, InvalidRequest, Overloaded, RateLimited, UpstreamError
from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.base import CallContext, ProviderContext
from meshgate.providers.cohere import CohereChat, CohereConfig, CohereEmbedding, _StreamTranslator
from meshgate.testing.fake_cohere import TOOL_INPUT, FakeCohere, fake_vector, tool_json_pieces
from tests.conftest import AppClient, make_runtime

KEY = "co-test-key"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCohere]:
    with FakeCohere(required_key=KEY) as server:
        yield server


@pytest.fixture()
async def make_model(fake: FakeCohere, tmp_path: Path) -> AsyncIterator[Any]:
    models: list[Any] = []

    async def make(upstream: str = "echo", key: str = KEY, **extra: Any) -> Any:
        config = CohereConfig.model_validate(
            {"name": "command", "provider": "cohere", "model": upstream, "api_key": key, "base_url": fake.base_url}
            | extra
        )
        model: Any = (CohereEmbedding if config.kind == "embedding" else CohereChat)(
            config, ProviderContext(data_dir=tmp_path)
        )
        await model.start()
        models.append(model)
        return model

    yield make
    for model in models:
        await model.close()


def req(messages: list[dict[str, Any]], **fields: Any) -> ChatCompletionRequest:
    return msgspec.convert({"model": "command", "messages": messages, **fields}, ChatCompletionRequest)


async def collect(model: CohereChat, request: ChatCompletionRequest, call: CallContext | None = None) -> list[Any]:
    return [chunk async for chunk in model.stream(request, call or CallContext("r1"))]


HELLO = [{"role": "user", "content": "hello there world"}]
WEATHER_TOOL = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


async def test_plain_completion_and_wire_format(make_model: Any, fake: FakeCohere) -> None:
    model = await make_model()
    call = CallContext("r1")
    result = await model.complete(req(HELLO), call)
    choice = result["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: hello there world", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert result["object"] == "chat.completion" and result["model"] == "command"
    # The fake counts words + 3 per message as input tokens (billed units one less), answer words as output.
    assert result["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (call.prompt_tokens, call.completion_tokens) == (6, 4)
    sent = fake.requests[-1]
    assert sent.path == "/v2/chat" and sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "model": "echo",
        "messages": [{"role": "user", "content": "hello there world"}],
        "stream": False,
    }


async def test_usage_falls_back_to_billed_units(make_model: Any) -> None:
    model = await make_model("billed")
    result = await model.complete(req(HELLO), CallContext("r"))
    assert result["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    chunks = await collect(model, req(HELLO))
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_request_translation(make_model: Any, fake: FakeCohere) -> None:
    model = await make_model()
    request = req(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "user", "content": [{"type": "text", "text": "what "}, {"type": "text", "text": "is this"}]},
        ],
        stop=["END"],
        temperature=0.5,
        top_p=0.9,
        seed=42,
        frequency_penalty=0.25,
        presence_penalty=0.5,
        max_completion_tokens=50,
        tools=[
            {"type": "function", "function": {"name": "look", "description": "Look", "parameters": {"type": "object"}}}
        ],
        tool_choice="required",
    )
    await model.complete(request, CallContext("r1"))  # the fake refuses unknown fields, as Cohere does
    body = fake.requests[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "what is this"},
    ]
    assert body["stop_sequences"] == ["END"] and body["max_tokens"] == 50
    assert (body["temperature"], body["p"], body["seed"]) == (0.5, 0.9, 42)
    assert (body["frequency_penalty"], body["presence_penalty"]) == (0.25, 0.5)
    assert body["tools"] == [
        {"type": "function", "function": {"name": "look", "description": "Look", "parameters": {"type": "object"}}}
    ]
    assert body["tool_choice"] == "REQUIRED"
    assert "top_p" not in body and "stop" not in body


async def test_tool_result_round_trip_keeps_ids(make_model: Any, fake: FakeCohere) -> None:
    model = await make_model()
    request = req(
        [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_A", "type": "function", "function": {"name": "weather", "arguments": '{"c": "P"}'}},
                    {"id": "call_B", "type": "function", "function": {"name": "weather", "arguments": '{"c": "R"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_A", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_B", "content": [{"type": "text", "text": "rainy"}]},
        ]
    )
    result = await model.complete(request, CallContext("r1"))  # the fake checks ids like the real API does
    assert result["choices"][0]["finish_reason"] == "stop"
    messages = fake.requests[-1].body["messages"]
    assert messages[1:] == [
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_A", "type": "function", "function": {"name": "weather", "arguments": '{"c": "P"}'}},
                {"id": "call_B", "type": "function", "function": {"name": "weather", "arguments": '{"c": "R"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_A", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_B", "content": "rainy"},
    ]


async def test_tool_call_answer_keeps_its_id(make_model: Any, fake: FakeCohere) -> None:
    model = await make_model("tool:weather")
    result = await model.complete(req(HELLO, tools=WEATHER_TOOL), CallContext("r"))
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None  # the tool plan is not passed on
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("weather_") and call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == TOOL_INPUT
    assert result["usage"]["completion_tokens"] == 9


@pytest.mark.parametrize("streamed", [False, True])
async def test_finish_reasons(make_model: Any, streamed: bool) -> None:
    model = await make_model()

    async def run(text: str, **fields: Any) -> tuple[str, str]:
        request = req([{"role": "user", "content": text}], **fields)
        if not streamed:
            choice = (await model.complete(request, CallContext("r")))["choices"][0]
            return choice["finish_reason"], choice["message"]["content"]
        chunks = await collect(model, request)
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1], content

    assert await run("one two STOP three", stop="STOP") == ("stop", "echo: one two ")
    assert await run("a b c d e", max_tokens=3) == ("length", "echo: a b")
    assert await run("a b") == ("stop", "echo: a b")


async def test_stream_text(make_model: Any, fake: FakeCohere) -> None:
    model = await make_model()
    call = CallContext("r1")
    chunks = await collect(model, req(HELLO), call)
    assert fake.requests[-1].body["stream"] is True
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"] and c["choices"][0]["delta"]]
    assert pieces == ["echo:", " hello", " there", " world"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (call.prompt_tokens, call.completion_tokens) == (6, 4)


async def test_stream_tool_call(make_model: Any) -> None:
    model = await make_model("tool:weather")
    chunks = await collect(model, req(HELLO, tools=WEATHER_TOOL))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    calls = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert len(calls) == 1 + len(tool_json_pieces()) > 3
    first = calls[0]
    assert first["index"] == 0 and first["id"].startswith("weather_") and first["type"] == "function"
    assert first["function"] == {"name": "weather", "arguments": ""}
    assert all("id" not in d and d["index"] == 0 for d in calls[1:])
    assert json.loads("".join(d["function"]["arguments"] for d in calls)) == TOOL_INPUT
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks if c["choices"])
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 9


@pytest.mark.parametrize(
    ("upstream", "key", "error", "status", "retry_after"),
    [
        ("echo", "wrong-key", UpstreamError, 502, None),
        ("fail:400", KEY, InvalidRequest, 400, None),
        ("fail:422", KEY, InvalidRequest, 400, None),
        ("fail:429", KEY, RateLimited, 429, 7),
        ("fail:500", KEY, UpstreamError, 502, None),
        ("fail:503", KEY, Overloaded, 503, 7),
        ("fail:402", KEY, UpstreamError, 502, None),
        ("fail:404", KEY, UpstreamError, 502, None),
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
        assert caught.value.upstream_status == (401 if key != KEY else int(upstream[5:]))


async def test_finish_reason_error_fails_the_call(make_model: Any) -> None:
    model = await make_model("error")
    with pytest.raises(UpstreamError, match="failed while generating") as caught:
        await model.complete(req(HELLO), CallContext("r"))
    assert type(caught.value) is UpstreamError
    seen: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError, match="internal generation error"):
        async for chunk in model.stream(req(HELLO), CallContext("r")):
            seen.append(chunk)
    assert seen[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in seen) == "echo: hello there world"
    assert not any(c["choices"][0]["finish_reason"] for c in seen)


@pytest.mark.parametrize("input_type", [None, "search_query", "clustering"])
async def test_embeddings_with_input_type(make_model: Any, fake: FakeCohere, input_type: str | None) -> None:
    extra = {"input_type": input_type} if input_type else {}
    model = await make_model("embed", kind="embedding", **extra)
    assert model.profile.embeddings and not model.profile.chat
    call = CallContext("r")
    texts = ["a b c", "hello", "x y"]
    result = await model.embed(texts, call)
    expected_type = input_type or "search_document"
    assert result.vectors == [fake_vector(t, expected_type) for t in texts]
    assert result.prompt_tokens == call.prompt_tokens == 6
    sent = fake.requests[-1]
    assert sent.path == "/v2/embed"
    assert sent.body == {"model": "embed", "texts": texts, "input_type": expected_type, "embedding_types": ["float"]}


async def test_embeddings_batch_past_96_texts(make_model: Any, fake: FakeCohere) -> None:
    model = await make_model("embed", kind="embedding")
    texts = [f"text {i}" for i in range(200)]
    before = len(fake.requests)
    result = await model.embed(texts, CallContext("r"))
    assert [len(r.body["texts"]) for r in fake.requests[before:]] == [96, 96, 8]
    assert result.vectors == [fake_vector(t, "search_document") for t in texts]
    assert result.prompt_tokens == 400


@pytest.mark.parametrize(
    ("upstream", "error", "status"),
    [("fail:400", InvalidRequest, 400), ("fail:429", RateLimited, 429), ("fail:503", Overloaded, 503)],
)
async def test_embedding_errors(make_model: Any, upstream: str, error: type, status: int) -> None:
    model = await make_model(upstream, kind="embedding")
    with pytest.raises(error) as caught:
        await model.embed(["hi"], CallContext("r"))
    assert type(caught.value) is error and caught.value.status == status


async def test_unreachable_is_upstream_error(tmp_path: Path) -> None:
    config = CohereConfig.model_validate(
        {"name": "c", "provider": "cohere", "model": "m", "api_key": KEY, "base_url": "http://127.0.0.1:9"}
        | {"connect_timeout": 1}
    )
    model = CohereChat(config, ProviderContext(data_dir=tmp_path))
    await model.start()
    try:
        with pytest.raises(UpstreamError, match="unreachable"):
            await model.complete(req(HELLO), CallContext("r"))
    finally:
        await model.close()


async def test_end_to_end_through_the_gateway(
    fake: FakeCohere, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_COHERE_KEY", KEY)
    runtime = make_runtime(
        tmp_path,
        f"""
        models:
          - name: command
            provider: cohere
            model: "tool:weather"
            base_url: {fake.base_url}
            api_key: ${{TEST_COHERE_KEY}}
          - name: embed
            provider: cohere
            kind: embedding
            model: embed
            input_type: search_query
            base_url: {fake.base_url}
            api_key: ${{TEST_COHERE_KEY}}
        """,
    )
    client = await AppClient.started(runtime)
    sdk = openai.AsyncOpenAI(
        base_url="http://meshgate.test/v1", api_key=client.key or "unused", http_client=client.http, max_retries=0
    )
    try:
        tools: Any = WEATHER_TOOL
        messages: Any = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "weather?"}]
        answer = await sdk.chat.completions.create(model="command", messages=messages, tools=tools, top_p=0.5)
        assert answer.choices[0].finish_reason == "tool_calls"
        tool_call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert json.loads(tool_call.function.arguments) == TOOL_INPUT  # type: ignore[union-attr]
        sent = fake.requests[-1]
        assert sent.headers["Authorization"] == f"Bearer {KEY}"
        assert sent.body["messages"][0] == {"role": "system", "content": "Be brief."} and sent.body["p"] == 0.5

        stream = await sdk.chat.completions.create(
            model="command", messages=messages, tools=tools, stream=True, stream_options={"include_usage": True}
        )
        arguments, ids, finish, usage = "", set(), None, None
        async for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or ():
                    arguments += (delta.function.arguments or "") if delta.function else ""
                    if delta.id:
                        ids.add(delta.id)
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        assert json.loads(arguments) == TOOL_INPUT and len(ids) == 1 and finish == "tool_calls"
        assert usage is not None and usage.completion_tokens == 9

        embedded = await sdk.embeddings.create(model="embed", input=["hello world"])
        assert embedded.data[0].embedding == pytest.approx(fake_vector("hello world", "search_query"), abs=1e-6)
        assert embedded.usage.prompt_tokens == 2
        assert fake.requests[-1].body["input_type"] == "search_query"
    finally:
        await client.http.aclose()
        await runtime.stop()


def test_api_key_must_be_an_env_reference(tmp_path: Path) -> None:
    entry = "models:\n  - {name: c, provider: cohere, model: m, api_key: %s}\n"
    with pytest.raises(ConfigError, match="api_key: secrets are not written in the file"):
        make_runtime(tmp_path, entry % "co-literal")
    with pytest.raises(ConfigError, match="api_key"):
        make_runtime(tmp_path, "models:\n  - {name: c, provider: cohere, model: m}\n")
    with pytest.raises(ConfigError, match="input_type"):
        make_runtime(tmp_path, "models:\n  - {name: c, provider: cohere, model: m, input_type: bogus}\n")


def test_stream_tool_call_without_arguments_gets_empty_object() -> None:
    translator = _StreamTranslator("command", CallContext("r"))
    start = {"message": {"tool_calls": {"id": "call_X", "type": "function", "function": {"name": "now"}}}}
    chunks = translator.feed("", json.dumps({"type": "tool-call-start", "index": 0, "delta": start}))
    chunks += translator.feed("", json.dumps({"type": "tool-call-end", "index": 0}))
    calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["id"] == "call_X" and calls[0]["function"]["name"] == "now"
    assert "".join(d["function"]["arguments"] for d in calls) == "{}"
