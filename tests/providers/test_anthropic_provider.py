"""The anthropic provider against a fake Messages API served on loopback (meshgate/testing/fake_anthropic.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic as anthropic_sdk
import msgspec
import openai
import pytest

from meshgate.errors import ConfigError, InvalidRequest, Overloaded, RateLimited, UpstreamError
from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.anthropic import AnthropicChat, AnthropicConfig
from meshgate.providers.base import CallContext, ProviderContext
from meshgate.testing.fake_anthropic import TOOL_INPUT, FakeAnthropic, tool_json_pieces
from tests.conftest import AppClient, make_runtime

KEY = "sk-ant-test-key"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(required_key=KEY) as server:
        yield server


@pytest.fixture()
async def make_model(fake: FakeAnthropic, tmp_path: Path) -> AsyncIterator[Any]:
    models: list[AnthropicChat] = []

    async def make(upstream: str = "echo", key: str = KEY, **extra: Any) -> AnthropicChat:
        config = AnthropicConfig.model_validate(
            {"name": "claude", "provider": "anthropic", "model": upstream, "api_key": key, "base_url": fake.base_url}
            | extra
        )
        model = AnthropicChat(config, ProviderContext(data_dir=tmp_path))
        await model.start()
        models.append(model)
        return model

    yield make
    for model in models:
        await model.close()


def req(messages: list[dict[str, Any]], **fields: Any) -> ChatCompletionRequest:
    return msgspec.convert({"model": "claude", "messages": messages, **fields}, ChatCompletionRequest)


async def collect(model: AnthropicChat, request: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [chunk async for chunk in model.stream(request, CallContext("r1"))]


HELLO = [{"role": "user", "content": "hello there world"}]


async def test_plain_completion_and_wire_headers(make_model: Any, fake: FakeAnthropic) -> None:
    model = await make_model()
    call = CallContext("r1")
    result = await model.complete(req(HELLO), call)
    choice = result["choices"][0]
    assert choice["message"]["content"] == "echo: hello there world"
    assert choice["finish_reason"] == "stop"
    assert result["object"] == "chat.completion" and result["model"] == "claude"
    # The fake counts words + 3 per message as input, words of the answer as output.
    assert result["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (call.prompt_tokens, call.completion_tokens) == (6, 4)
    sent = fake.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in {k.lower() for k in sent.headers}
    assert sent.body["max_tokens"] == 4096 and sent.body["model"] == "echo"
    assert "stream" not in sent.body


async def test_request_translation(make_model: Any, fake: FakeAnthropic) -> None:
    model = await make_model(max_tokens_default=77)
    request = req(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            },
        ],
        stop=["END"],
        temperature=0.5,
        top_p=0.9,
        user="user-42",
        tools=[
            {"type": "function", "function": {"name": "look", "description": "Look", "parameters": {"type": "object"}}}
        ],
        tool_choice={"type": "function", "function": {"name": "look"}},
        parallel_tool_calls=False,
    )
    await model.complete(request, CallContext("r1"))
    body = fake.requests[-1].body
    assert body["system"] == "Be brief.\n\nUse French."
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert body["max_tokens"] == 77
    assert body["stop_sequences"] == ["END"]
    assert (body["temperature"], body["top_p"]) == (0.5, 0.9)
    assert body["metadata"] == {"user_id": "user-42"}
    assert body["tools"] == [{"name": "look", "description": "Look", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "tool", "name": "look", "disable_parallel_tool_use": True}

    await model.complete(
        req(HELLO, max_completion_tokens=12, tool_choice="required", tools=request.tools), CallContext("r")
    )
    body = fake.requests[-1].body
    assert body["max_tokens"] == 12 and body["tool_choice"] == {"type": "any"} and "system" not in body


async def test_tool_result_round_trip_keeps_ids(make_model: Any, fake: FakeAnthropic) -> None:
    model = await make_model()
    request = req(
        [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_A",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_B",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_A", "content": "sunny"},
            {"role": "tool", "tool_call_id": "toolu_B", "content": [{"type": "text", "text": "rainy"}]},
        ]
    )
    result = await model.complete(request, CallContext("r1"))  # the fake checks ids like the real API does
    assert result["choices"][0]["finish_reason"] == "stop"
    messages = fake.requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_A", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_B", "name": "weather", "input": {"city": "Rome"}},
    ]
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_A", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_B", "content": "rainy"},
    ]


async def test_tool_call_answer(make_model: Any) -> None:
    model = await make_model("tool:weather")
    result = await model.complete(
        req(HELLO, tools=[{"type": "function", "function": {"name": "weather"}}]), CallContext("r")
    )
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("toolu_") and call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == TOOL_INPUT


async def test_stop_sequence_and_max_tokens(make_model: Any) -> None:
    model = await make_model()
    result = await model.complete(
        req([{"role": "user", "content": "one two STOP three"}], stop="STOP"), CallContext("r")
    )
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["choices"][0]["message"]["content"] == "echo: one two "
    result = await model.complete(req([{"role": "user", "content": "a b c d e"}], max_tokens=3), CallContext("r"))
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["choices"][0]["message"]["content"] == "echo: a b"
    assert result["usage"]["completion_tokens"] == 3
    chunks = await collect(model, req([{"role": "user", "content": "a b c d e"}], max_tokens=2))
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


async def test_stream_text(make_model: Any, fake: FakeAnthropic) -> None:
    model = await make_model()
    call = CallContext("r1")
    chunks = [chunk async for chunk in model.stream(req(HELLO), call)]
    assert fake.requests[-1].body["stream"] is True
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: hello there world"
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 4
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (call.prompt_tokens, call.completion_tokens) == (6, 4)


async def test_stream_tool_call_reassembles(make_model: Any) -> None:
    model = await make_model("tool:weather")
    chunks = await collect(model, req(HELLO, tools=[{"type": "function", "function": {"name": "weather"}}]))
    calls = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert len(calls) == 1 + len(tool_json_pieces()) > 3
    first = calls[0]
    assert first["index"] == 0 and first["id"].startswith("toolu_") and first["type"] == "function"
    assert first["function"]["name"] == "weather"
    assert all("id" not in d and d["index"] == 0 for d in calls[1:])
    arguments = "".join(d["function"].get("arguments") or "" for d in calls)
    assert arguments == json.dumps(TOOL_INPUT)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Let me check."
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 9


@pytest.mark.parametrize(
    ("upstream", "key", "error", "status", "retry_after"),
    [
        ("echo", "wrong-key", UpstreamError, 502, None),
        ("fail:429", KEY, RateLimited, 429, 7),
        ("fail:529", KEY, Overloaded, 503, 7),
        ("fail:500", KEY, UpstreamError, 502, None),
        ("fail:400", KEY, InvalidRequest, 400, None),
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


async def test_mid_stream_error_event(make_model: Any) -> None:
    model = await make_model("streamerror")
    seen: list[dict[str, Any]] = []
    with pytest.raises(Overloaded):
        async for chunk in model.stream(req(HELLO), CallContext("r")):
            seen.append(chunk)
    assert seen[0]["choices"][0]["delta"]["role"] == "assistant"
    assert seen[-1]["choices"][0]["delta"] == {"content": "echo:"}


async def test_unreachable_is_upstream_error(tmp_path: Path) -> None:
    config = AnthropicConfig.model_validate(
        {
            "name": "c",
            "provider": "anthropic",
            "model": "m",
            "api_key": KEY,
            "base_url": "http://127.0.0.1:9",
            "connect_timeout": 1,
        }
    )
    model = AnthropicChat(config, ProviderContext(data_dir=tmp_path))
    await model.start()
    try:
        with pytest.raises(UpstreamError, match="unreachable"):
            await model.complete(req(HELLO), CallContext("r"))
    finally:
        await model.close()


async def test_fake_speaks_the_sdk_wire_format(fake: FakeAnthropic) -> None:
    """The official SDK parses the fake's answers and streams: the fake is a faithful stand-in."""
    client = anthropic_sdk.AsyncAnthropic(api_key=KEY, base_url=fake.base_url, max_retries=0)
    try:
        message = await client.messages.create(
            model="tool:weather", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.stop_reason == "tool_use" and message.content[1].type == "tool_use"
        async with client.messages.stream(
            model="tool:weather", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_message()
        block = final.content[1]
        assert block.type == "tool_use" and block.input == TOOL_INPUT
        with pytest.raises(anthropic_sdk.RateLimitError):
            await client.messages.create(model="fail:429", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()


async def test_end_to_end_through_the_gateway(
    fake: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
    runtime = make_runtime(
        tmp_path,
        f"""
        models:
          - name: claude
            provider: anthropic
            model: "tool:weather"
            base_url: {fake.base_url}
            api_key: ${{TEST_ANTHROPIC_KEY}}
        """,
    )
    client = await AppClient.started(runtime)
    sdk = openai.AsyncOpenAI(
        base_url="http://meshgate.test/v1", api_key=client.key or "unused", http_client=client.http, max_retries=0
    )
    try:
        tools: Any = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
        messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "weather?"}]
        answer = await sdk.chat.completions.create(model="claude", messages=messages, tools=tools)
        assert answer.choices[0].finish_reason == "tool_calls"
        tool_call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert json.loads(tool_call.function.arguments) == TOOL_INPUT  # type: ignore[union-attr]
        assert fake.requests[-1].headers["x-api-key"] == KEY
        assert fake.requests[-1].body["system"] == "Be brief."

        stream = await sdk.chat.completions.create(
            model="claude", messages=messages, tools=tools, stream=True, stream_options={"include_usage": True}
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

        with pytest.raises(openai.BadRequestError):  # Anthropic has no seed: refused, not dropped
            await sdk.chat.completions.create(model="claude", messages=messages, seed=3)
    finally:
        await client.http.aclose()
        await runtime.stop()


def test_api_key_must_be_an_env_reference(tmp_path: Path) -> None:
    entry = "models:\n  - {name: c, provider: anthropic, model: m, api_key: %s}\n"
    with pytest.raises(ConfigError, match="api_key: secrets are not written in the file"):
        make_runtime(tmp_path, entry % "sk-ant-literal")
    with pytest.raises(ConfigError, match="api_key"):
        make_runtime(tmp_path, "models:\n  - {name: c, provider: anthropic, model: m}\n")
