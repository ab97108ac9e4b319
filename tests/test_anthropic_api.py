"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API), with the official
`anthropic` SDK against the fake upstream (`bench` echoes) and the real local model, and unit tests
of the translation both ways."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import msgspec
import pytest
import uvicorn
from anthropic.lib.streaming._messages import accumulate_event

from meshgate.api.anthropic_translate import (
    MessagesRequest,
    StreamTranslator,
    error_status_and_type,
    to_anthropic_message,
    to_openai,
)
from meshgate.control.policy import AuthenticationError, PermissionDenied
from meshgate.errors import (
    BudgetExceeded,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    UnsupportedParameter,
    UpstreamError,
)
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, free_port

# -- translation, both ways -----------------------------------------------------------------------


def _request(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **fields}
    return msgspec.convert(body, MessagesRequest)


TOOL_HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_01ABC", "name": "weather", "input": {"city": "Paris"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01ABC", "content": [{"type": "text", "text": "18C"}]},
            {"type": "text", "text": "And tomorrow?"},
        ],
    },
]
WEATHER_TOOL = {
    "name": "weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_request_translation_keeps_system_turns_tools_and_tool_ids() -> None:
    request = _request(
        system=[{"type": "text", "text": "Be terse."}],
        messages=TOOL_HISTORY,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        metadata={"user_id": "u-42"},
        temperature=0.5,
        top_p=0.9,
        stop_sequences=["END"],
    )
    wire = msgspec.to_builtins(to_openai(request, stream=True))
    roles = [m["role"] for m in wire["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert wire["messages"][0]["content"] == "Be terse."
    call = wire["messages"][2]["tool_calls"][0]
    assert call["id"] == "toolu_01ABC"
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert wire["messages"][2]["content"] == "Let me look."
    assert wire["messages"][3] == {"role": "tool", "tool_call_id": "toolu_01ABC", "content": "18C"}
    assert wire["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather of a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert wire["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert wire["parallel_tool_calls"] is False
    assert wire["user"] == "u-42"
    assert (wire["temperature"], wire["top_p"], wire["max_tokens"], wire["stream"]) == (0.5, 0.9, 10, True)
    assert "stop" not in wire  # matched by the gateway, which alone can tell which one ended the text


def test_request_translation_of_images_error_results_and_tool_choices() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
    by_url = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    failed = {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}
    request = _request(messages=[{"role": "user", "content": [failed, image, by_url]}])
    wire = msgspec.to_builtins(to_openai(request))
    assert wire["messages"][0] == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert [p["image_url"]["url"] for p in wire["messages"][1]["content"]] == [
        "data:image/png;base64,iVBOR",
        "https://example.com/a.png",
    ]
    for choice, expected in [("auto", "auto"), ("any", "required"), ("none", "none")]:
        wire = msgspec.to_builtins(to_openai(_request(tools=[WEATHER_TOOL], tool_choice={"type": choice})))
        assert wire["tool_choice"] == expected
        assert "parallel_tool_calls" not in wire
    with pytest.raises(UnsupportedParameter) as refused:
        to_openai(_request(top_k=5))
    assert refused.value.param == "top_k"
    with pytest.raises(InvalidRequest):
        to_openai(_request(messages=[{"role": "user", "content": [TOOL_HISTORY[1]["content"][1]]}]))


def _completion(content: str | None, finish: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }


def test_answer_translation_maps_stop_reasons_and_tool_calls() -> None:
    for finish, reason in [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use")]:
        message = to_anthropic_message(_completion("hi", finish), "m", [])
        assert (message["stop_reason"], message["stop_sequence"]) == (reason, None)
        assert message["usage"]["input_tokens"] == 7 and message["usage"]["output_tokens"] == 3
    call = {"id": "call_XYZ", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    message = to_anthropic_message(_completion(None, "tool_calls", [call]), "m", [])
    assert message["content"] == [{"type": "tool_use", "id": "call_XYZ", "name": "weather", "input": {"city": "Oslo"}}]
    assert message["stop_reason"] == "tool_use"
    # A stop sequence in the text: cut there, whichever comes first, and named.
    message = to_anthropic_message(_completion("one two three four", "stop"), "m", ["four", "three"])
    assert message["content"] == [{"type": "text", "text": "one two "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "three")
    # Even when the model ran into its token limit after it.
    message = to_anthropic_message(_completion("one two three", "length"), "m", ["two"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "two")


def _events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in data.decode().split("\n\n"):
        if block:
            name_line, data_line = block.split("\n")
            assert name_line.startswith("event: ") and data_line.startswith("data: ")
            payload = json.loads(data_line[len("data: ") :])
            assert payload["type"] == name_line[len("event: ") :]
            events.append((payload["type"], payload))
    return events


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"choices": choices, "usage": usage}


def _run_stream(translator: StreamTranslator, chunks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    data = b"".join(translator.encode(c) or b"" for c in chunks) + translator.finish()
    return _events(data)


def _final(events: list[tuple[str, dict[str, Any]]]) -> Any:
    """The Message the SDK's own stream accumulator builds from the events."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, payload in events:
        if name != "ping":
            snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=buffers)  # type: ignore[arg-type]
    return snapshot


def test_stream_translation_sends_anthropics_event_sequence() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2}
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({}, "stop"),
        _chunk(None, usage=usage),
    ]
    events = _run_stream(StreamTranslator("m", [], 5), chunks)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 5
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    delta = events[6][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 5, "output_tokens": 2}
    final = _final(events)
    assert final.content[0].text == "Hello" and final.stop_reason == "end_turn"


def test_stream_translation_of_tool_calls_is_input_json_delta_with_the_ids() -> None:
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}
    second = {"index": 1, "id": "call_2", "type": "function", "function": {"name": "time", "arguments": '{"tz"'}}
    chunks = [
        _chunk({"role": "assistant", "content": "Checking."}),
        _chunk({"tool_calls": [first]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        _chunk({"tool_calls": [second]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": ':"UTC"}'}}]}),
        _chunk({}, "tool_calls"),
    ]
    events = _run_stream(StreamTranslator("m", []), chunks)
    starts = [p["content_block"] for n, p in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use", "tool_use"]
    assert [(b["id"], b["name"], b["input"]) for b in starts[1:]] == [("call_1", "weather", {}), ("call_2", "time", {})]
    partial = [p["delta"]["partial_json"] for n, p in events if p.get("delta", {}).get("type") == "input_json_delta"]
    assert partial == ['{"city":', '"Oslo"}', '{"tz"', ':"UTC"}']
    assert [n for n, _ in events].count("content_block_stop") == 3
    final = _final(events)
    assert [(b.type, getattr(b, "id", None)) for b in final.content] == [
        ("text", None),
        ("tool_use", "call_1"),
        ("tool_use", "call_2"),
    ]
    assert final.content[1].input == {"city": "Oslo"} and final.content[2].input == {"tz": "UTC"}
    assert final.stop_reason == "tool_use"


def test_stream_translation_cuts_at_a_stop_sequence_split_over_chunks() -> None:
    chunks = [_chunk({"content": p}) for p in ["one tw", "o thr", "ee four"]] + [_chunk({}, "stop")]
    events = _run_stream(StreamTranslator("m", ["three", "xyz"]), chunks)
    text = "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta")
    assert text == "one two "
    delta = next(p for n, p in events if n == "message_delta")["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "three"}
    # Held-back text that turns out not to be a stop sequence is sent in the end.
    events = _run_stream(StreamTranslator("m", ["three"]), [_chunk({"content": "one thr"}), _chunk({}, "length")])
    assert "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta") == "one thr"
    assert next(p for n, p in events if n == "message_delta")["delta"]["stop_reason"] == "max_tokens"


def test_errors_map_to_anthropics_types_and_statuses() -> None:
    cases = [
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (UnsupportedParameter("x"), 400, "invalid_request_error"),
        (AuthenticationError("x"), 401, "authentication_error"),
        (PermissionDenied("x"), 403, "permission_error"),
        (ModelNotFound("x"), 404, "not_found_error"),
        (PayloadTooLarge(10), 413, "request_too_large"),
        (RateLimited("x"), 429, "rate_limit_error"),
        (BudgetExceeded("x"), 429, "rate_limit_error"),
        (InternalError(), 500, "api_error"),
        (UpstreamError("x"), 502, "api_error"),
        (Overloaded("x"), 529, "overloaded_error"),
    ]
    for error, status, kind in cases:
        assert error_status_and_type(error) == (status, kind), error


# -- through the gateway, with the official SDK ---------------------------------------------------


def _client(url: str, key: str | None, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=120, **options)


def _async_client(url: str, key: str | None, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0, timeout=120, **options)


async def test_sync_create_with_system_and_turns(proxy_client: AppClient, proxy_url: str) -> None:
    client = _client(proxy_url, proxy_client.key)  # the key as x-api-key
    message = await asyncio.to_thread(
        client.messages.create,
        model="bench",
        max_tokens=50,
        system="You echo.",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "echo: first"},
            {"role": "user", "content": "hello there"},
        ],
        metadata={"user_id": "user-7"},
        extra_body={"temperature": 0.2, "top_p": 0.9},  # not in this SDK's signature
    )
    assert message.type == "message" and message.role == "assistant" and message.model == "bench"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "echo: hello there"
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 3
    assert message.id.startswith("msg_")


async def test_async_create_with_a_bearer_key_and_the_version_header(
    proxy_client: AppClient, proxy_url: str, fake_upstream: FakeOpenAI
) -> None:
    client = anthropic.AsyncAnthropic(base_url=proxy_url, auth_token=proxy_client.key, max_retries=0)
    seen = len(fake_upstream.requests)
    message = await client.messages.create(
        model="bench", max_tokens=50, messages=[{"role": "user", "content": "bearer works"}]
    )
    assert message.content[0].text == "echo: bearer works"
    upstream = fake_upstream.requests[seen].body
    assert upstream["messages"] == [{"role": "user", "content": "bearer works"}]
    assert upstream["max_tokens"] == 50


async def test_tool_ids_reach_the_upstream_as_openai_tool_calls(
    proxy_client: AppClient, proxy_url: str, fake_upstream: FakeOpenAI
) -> None:
    client = _async_client(proxy_url, proxy_client.key)
    seen = len(fake_upstream.requests)
    message = await client.messages.create(
        model="bench", max_tokens=50, messages=TOOL_HISTORY, tools=[WEATHER_TOOL], tool_choice={"type": "auto"}
    )
    assert message.content[0].text == "echo: And tomorrow?"
    upstream = fake_upstream.requests[seen].body
    assert upstream["messages"][1]["tool_calls"][0]["id"] == "toolu_01ABC"
    assert upstream["messages"][2] == {"role": "tool", "tool_call_id": "toolu_01ABC", "content": "18C"}
    assert upstream["tools"][0]["function"]["name"] == "weather"
    assert upstream["tool_choice"] == "auto"


async def test_stream_helper_text_and_final_message(proxy_client: AppClient, proxy_url: str) -> None:
    client = _async_client(proxy_url, proxy_client.key)
    names: list[str] = []
    async with client.messages.stream(
        model="bench", max_tokens=50, messages=[{"role": "user", "content": "stream me please"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "echo: stream me please"
    assert len(pieces) > 1
    assert final.content[0].text == "echo: stream me please"
    assert (final.stop_reason, final.stop_sequence) == ("end_turn", None)
    assert final.usage.input_tokens > 0 and final.usage.output_tokens == 4
    # The raw event names, as the SDK saw them (ping included).
    raw = await client.messages.create(
        model="bench", max_tokens=50, messages=[{"role": "user", "content": "raw"}], stream=True
    )
    async for event in raw:
        names.append(event.type)
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}


async def test_sync_stream_helper(proxy_client: AppClient, proxy_url: str) -> None:
    client = _client(proxy_url, proxy_client.key)

    def run() -> tuple[str, Any]:
        with client.messages.stream(model="bench", max_tokens=50, messages=[{"role": "user", "content": "sync"}]) as s:
            return "".join(s.text_stream), s.get_final_message()

    text, final = await asyncio.to_thread(run)
    assert text == "echo: sync" and final.stop_reason == "end_turn"


async def test_stop_sequences_and_max_tokens(proxy_client: AppClient, proxy_url: str) -> None:
    client = _async_client(proxy_url, proxy_client.key)
    ask = [{"role": "user", "content": "alpha beta gamma delta"}]
    message = await client.messages.create(model="bench", max_tokens=50, messages=ask, stop_sequences=["zeta", "gamma"])
    assert message.content[0].text == "echo: alpha beta "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "gamma")
    async with client.messages.stream(model="bench", max_tokens=50, messages=ask, stop_sequences=["gamma"]) as s:
        streamed = "".join([t async for t in s.text_stream])
        final = await s.get_final_message()
    assert streamed == "echo: alpha beta "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "gamma")
    message = await client.messages.create(model="bench", max_tokens=2, messages=ask)
    assert message.content[0].text == "echo: alpha"
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 2)
    async with client.messages.stream(model="bench", max_tokens=2, messages=ask) as s:
        final = await s.get_final_message()
    assert final.stop_reason == "max_tokens"


async def test_errors_in_anthropics_schema(proxy_client: AppClient, proxy_url: str) -> None:
    client = _async_client(proxy_url, proxy_client.key)
    ask = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="no-such-model", max_tokens=5, messages=ask)
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": missing.value.body["error"]["message"]},
    }  # type: ignore[index]
    assert "no-such-model" in missing.value.message
    with pytest.raises(anthropic.NotFoundError):  # streamed: refused before the first event
        async with client.messages.stream(model="no-such-model", max_tokens=5, messages=ask) as stream:
            await stream.get_final_message()
    with pytest.raises(anthropic.AuthenticationError) as refused:
        await _async_client(proxy_url, "not-a-key").messages.create(model="bench", max_tokens=5, messages=ask)
    # Refused before routing, by the route guard, still in Anthropic's schema.
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    with pytest.raises(anthropic.InternalServerError) as upstream:
        await client.messages.create(model="fail500", max_tokens=5, messages=ask)
    assert upstream.value.status_code == 502 and upstream.value.body["error"]["type"] == "api_error"  # type: ignore[index]

    http = proxy_client.http
    response = await http.post("/v1/messages", json={"model": "bench", "messages": ask})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    response = await http.post("/v1/messages", json={"model": "bench", "max_tokens": 5, "messages": ask, "bogus": 1})
    assert response.status_code == 400 and "bogus" in response.json()["error"]["message"]
    response = await http.post("/v1/messages", json={"model": "bench", "max_tokens": 5, "messages": ask, "top_k": 3})
    assert response.status_code == 400 and "top_k" in response.json()["error"]["message"]
    response = await http.post("/v1/messages", content=b"{" + b" " * 70_000 + b"}")
    assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"


async def test_count_tokens_estimates_for_an_upstream_model(proxy_client: AppClient, proxy_url: str) -> None:
    client = _async_client(proxy_url, proxy_client.key)
    short = await client.messages.with_raw_response.count_tokens(
        model="bench", messages=[{"role": "user", "content": "hi"}]
    )
    assert short.headers["meshgate-token-count"] == "estimate"
    long = await client.messages.count_tokens(model="bench", messages=[{"role": "user", "content": "word " * 400}])
    assert (await short.parse()).input_tokens < long.input_tokens
    assert 400 <= long.input_tokens <= 700
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "hi"}])


# -- the real local model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def local_url(local_client: AppClient) -> AsyncIterator[str]:
    """The local model's app behind a real uvicorn socket, for the SDK."""
    port = free_port()
    config = uvicorn.Config(local_client.app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


LETTERS = [{"role": "user", "content": "Write the letters a b c d e f g"}]


@pytest.mark.slow
async def test_local_model_messages_stop_sequence_and_max_tokens(local_client: AppClient, local_url: str) -> None:
    client = _async_client(local_url, local_client.key)
    free = await client.messages.create(
        model="local-chat", max_tokens=30, system="You are terse.", messages=LETTERS, extra_body={"temperature": 0}
    )
    text = free.content[0].text
    assert free.usage.input_tokens > 0 and free.usage.output_tokens > 0
    assert free.stop_reason in ("end_turn", "max_tokens")
    stop = text[2:4]
    stopped = await client.messages.create(
        model="local-chat",
        max_tokens=30,
        system="You are terse.",
        messages=LETTERS,
        extra_body={"temperature": 0},
        stop_sequences=[stop],
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    assert text.startswith(stopped.content[0].text) and stop not in stopped.content[0].text
    async with client.messages.stream(
        model="local-chat",
        max_tokens=30,
        system="You are terse.",
        messages=LETTERS,
        extra_body={"temperature": 0},
        stop_sequences=[stop],
    ) as stream:
        streamed = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert streamed == stopped.content[0].text
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    assert final.usage.input_tokens == free.usage.input_tokens  # the prompt, by the model's tokenizer
    limited = await client.messages.create(
        model="local-chat", max_tokens=2, messages=[{"role": "user", "content": "Count from 1 to 50."}]
    )
    assert (limited.stop_reason, limited.usage.output_tokens) == ("max_tokens", 2)


@pytest.mark.slow
async def test_local_model_count_tokens_uses_its_tokenizer(local_client: AppClient, local_url: str) -> None:
    client = _async_client(local_url, local_client.key)
    raw = await client.messages.with_raw_response.count_tokens(
        model="local-chat", system="You are terse.", messages=LETTERS
    )
    assert raw.headers["meshgate-token-count"] == "tokenizer"
    request = to_openai(_request(model="local-chat", system="You are terse.", messages=LETTERS))
    prepared = local_client.runtime.models["local-chat"]._prepare(request)  # type: ignore[attr-defined]
    assert (await raw.parse()).input_tokens == len(prepared.prompt_tokens)
    message = await client.messages.create(model="local-chat", max_tokens=1, system="You are terse.", messages=LETTERS)
    assert message.usage.input_tokens == len(prepared.prompt_tokens)


@pytest.mark.slow
async def test_local_model_refuses_tools_and_images_as_anthropic_errors(
    local_client: AppClient, local_url: str
) -> None:
    client = _async_client(local_url, local_client.key)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(model="local-chat", max_tokens=5, messages=LETTERS, tools=[WEATHER_TOOL])
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "tools" in refused.value.message
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model="local-chat", max_tokens=5, messages=[{"role": "user", "content": [image]}])


async def test_a_stream_failing_midway_ends_with_an_error_event(proxy_client: AppClient, proxy_url: str) -> None:
    client = _async_client(proxy_url, proxy_client.key)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with client.messages.stream(
            model="cut", max_tokens=50, messages=[{"role": "user", "content": "one two three four"}]
        ) as stream:
            async for event in stream:
                seen.append(event.type)
    assert seen[0] == "message_start"
    assert failed.value.body["type"] == "error"  # type: ignore[index]
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
