"""POST /v1/responses (OpenAI's Responses API) through the chat pipeline, with the `openai` SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import openai
import pydantic
import pytest
import uvicorn
from openai import AsyncOpenAI

from meshgate.protocol import ChatCompletionRequest
from meshgate.store.responses import ResponseStore
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, free_port

pytestmark = pytest.mark.timeout(120)


def sdk(base_url: str, key: str | None) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url + "/v1", api_key=key or "none", max_retries=0)


@pytest.fixture(scope="session")
async def local_url(local_client: AppClient) -> AsyncIterator[str]:
    """The local-model app behind a real socket, for the SDK."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(local_client.app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture(scope="session")
async def other_key(proxy_client: AppClient) -> str:
    """A second key of another team: it must never see the first key's responses."""
    runtime = proxy_client.runtime
    assert runtime.control is not None and runtime.keys is not None
    created = await runtime.control.create_key("responses-other", role="developer")
    await runtime.keys.reload()
    return created.key


def last_upstream_messages(fake: FakeOpenAI) -> list[dict[str, Any]]:
    chats = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    messages: list[dict[str, Any]] = chats[-1].body["messages"]
    return messages


async def test_plain_response(proxy_url: str, proxy_client: AppClient) -> None:
    client = sdk(proxy_url, proxy_client.key)
    response = await client.responses.create(model="bench", input="hello there")
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "echo: hello there"
    assert [item.type for item in response.output] == ["message"]
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert response.usage is not None
    assert response.usage.output_tokens == 3  # the fake counts words
    assert response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    # Strictly valid against the SDK's type (the SDK itself does not validate).
    raw = await proxy_client.http.post("/v1/responses", json={"model": "bench", "input": "strict"})
    assert openai.types.responses.Response.model_validate(raw.json()).output_text == "echo: strict"


async def test_instructions_reach_the_model_as_a_system_message(
    proxy_url: str, proxy_client: AppClient, fake_upstream: FakeOpenAI
) -> None:
    client = sdk(proxy_url, proxy_client.key)
    response = await client.responses.create(model="bench", input="hi", instructions="Be brief.")
    assert response.instructions == "Be brief."
    assert last_upstream_messages(fake_upstream) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


async def test_input_items_become_chat_messages(
    proxy_url: str, proxy_client: AppClient, fake_upstream: FakeOpenAI
) -> None:
    client = sdk(proxy_url, proxy_client.key)
    response = await client.responses.create(
        model="bench",
        input=[
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "weather in Oslo?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Oslo"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "user", "content": "and so?"},
        ],
        tools=[{"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": False}],
    )
    assert response.output_text == "echo: and so?"
    messages = last_upstream_messages(fake_upstream)
    assert messages[0] == {"role": "developer", "content": "Use tools."}
    assert messages[1] == {"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}]}
    assert messages[2]["role"] == "assistant"
    assert messages[2]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    ]
    assert messages[3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    chats = [r for r in fake_upstream.requests if r.path.endswith("/chat/completions")]
    assert chats[-1].body["tools"] == [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "strict": False}}
    ]


async def test_streamed_events_in_order(proxy_url: str, proxy_client: AppClient) -> None:
    client = sdk(proxy_url, proxy_client.key)
    stream = await client.responses.create(model="bench", input="one two three", stream=True)
    events = [event async for event in stream]
    types = [event.type for event in events]
    deltas = [i for i, t in enumerate(types) if t == "response.output_text.delta"]
    assert deltas and types[: deltas[0]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[deltas[-1] + 1 :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert len(deltas) == deltas[-1] - deltas[0] + 1  # contiguous
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(events[i].delta for i in deltas)  # type: ignore[union-attr]
    assert text == "echo: one two three"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == text
    assert completed.response.id == events[0].response.id  # type: ignore[union-attr]
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 4
    assert completed.response.usage.total_tokens == (
        completed.response.usage.input_tokens + completed.response.usage.output_tokens
    )


async def test_stream_helper_final_response(proxy_url: str, proxy_client: AppClient) -> None:
    client = sdk(proxy_url, proxy_client.key)
    async with client.responses.stream(model="bench", input="streamed hello") as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "echo: streamed hello"
    assert final.output_text == "echo: streamed hello"
    assert final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 3


async def test_previous_response_id_continues_the_conversation(
    proxy_url: str, proxy_client: AppClient, fake_upstream: FakeOpenAI
) -> None:
    client = sdk(proxy_url, proxy_client.key)
    first = await client.responses.create(model="bench", input="my name is Ann", instructions="Old rules.")
    second = await client.responses.create(
        model="bench", input="what is my name?", previous_response_id=first.id, instructions="New rules."
    )
    assert second.previous_response_id == first.id
    assert last_upstream_messages(fake_upstream) == [
        {"role": "system", "content": "New rules."},  # instructions are not carried over, as at OpenAI
        {"role": "user", "content": "my name is Ann"},
        {"role": "assistant", "content": "echo: my name is Ann"},
        {"role": "user", "content": "what is my name?"},
    ]
    # A streamed response is stored too, and chains further.
    async with client.responses.stream(model="bench", input="third", previous_response_id=second.id) as stream:
        third = await stream.get_final_response()
    await client.responses.create(model="bench", input="fourth", previous_response_id=third.id)
    contents = [m["content"] for m in last_upstream_messages(fake_upstream)]
    assert contents == [
        "my name is Ann",
        "echo: my name is Ann",
        "what is my name?",
        "echo: what is my name?",
        "third",
        "echo: third",
        "fourth",
    ]
    fetched = await client.responses.retrieve(second.id)
    assert fetched.output_text == "echo: what is my name?"


async def test_another_keys_response_is_not_found(proxy_url: str, proxy_client: AppClient, other_key: str) -> None:
    mine = sdk(proxy_url, proxy_client.key)
    theirs = sdk(proxy_url, other_key)
    first = await mine.responses.create(model="bench", input="secret")
    with pytest.raises(openai.NotFoundError) as refused:
        await theirs.responses.create(model="bench", input="tell me", previous_response_id=first.id)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert "secret" not in refused.value.message
    with pytest.raises(openai.NotFoundError):
        await theirs.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.responses.delete(first.id)
    # The owner still has it.
    continued = await mine.responses.create(model="bench", input="again", previous_response_id=first.id)
    assert continued.status == "completed"
    await mine.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await mine.responses.retrieve(first.id)


async def test_store_false_is_not_kept(proxy_url: str, proxy_client: AppClient) -> None:
    client = sdk(proxy_url, proxy_client.key)
    first = await client.responses.create(model="bench", input="forget me", store=False)
    assert first.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="bench", input="hm?", previous_response_id=first.id)


async def test_unknown_model_is_404(proxy_url: str, proxy_client: AppClient) -> None:
    client = sdk(proxy_url, proxy_client.key)
    with pytest.raises(openai.NotFoundError) as refused:
        await client.responses.create(model="no-such-model", input="hi")
    assert refused.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input="hi", stream=True)


async def test_unsupported_fields_are_refused(proxy_client: AppClient) -> None:
    for extra, param in [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ]:
        response = await proxy_client.http.post("/v1/responses", json={"model": "bench", "input": "hi", **extra})
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert error["param"] == param
        assert error["code"] == "unsupported_parameter"
    response = await proxy_client.http.post("/v1/responses", json={"model": "bench", "input": "hi", "nope": 1})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_parameter"


async def test_failure_mid_stream_is_an_error_event(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post("/v1/responses", json={"model": "cut", "input": "a b c d", "stream": True})
    assert response.status_code == 200
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
        for block in response.text.strip().split("\n\n")
    ]
    assert events[0][0] == "response.created"
    assert [name for name, _ in events[-2:]] == ["error", "response.failed"]
    assert events[-1][1]["response"]["status"] == "failed"
    assert all(name == data["type"] for name, data in events)


async def test_store_bounds() -> None:
    store = ResponseStore(max_responses=2, max_bytes=10_000)
    for n in range(3):
        store.put("k", {"id": f"resp_{n}"}, [{"role": "user", "content": "x"}])
    assert len(store) == 2 and await store.get("k", "resp_0") is None and await store.get("k", "resp_2") is not None
    assert await store.get("other", "resp_2") is None
    store.put("k", {"id": "resp_big"}, [{"role": "user", "content": "x" * 6000}])
    store.put("k", {"id": "resp_big2"}, [{"role": "user", "content": "x" * 6000}])
    assert await store.get("k", "resp_big") is None and store.bytes <= 10_000
    assert await store.get("k", "resp_big2") is not None


# -- the real local model ----------------------------------------------------------------------------


async def test_tools_refused_for_a_model_without_tools(local_client: AppClient) -> None:
    response = await local_client.http.post(
        "/v1/responses",
        json={"model": "local-chat", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_parameter"
    assert error["param"] == "tools"


@pytest.mark.slow
async def test_local_model_plain_and_streamed(local_url: str, local_client: AppClient) -> None:
    client = sdk(local_url, local_client.key)
    ask = "Name three colours."
    plain = await client.responses.create(
        model="local-chat", input=ask, instructions="You are terse.", max_output_tokens=16, temperature=0
    )
    assert plain.output_text
    # The instructions are in the prompt the model saw: its tokenizer's count of system + user.
    model = local_client.runtime.models["local-chat"]
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": ask}]
    prepared = model._prepare(  # type: ignore[attr-defined]
        msgspec.convert({"model": "local-chat", "messages": messages}, ChatCompletionRequest)
    )
    assert plain.usage is not None and plain.usage.input_tokens == len(prepared.prompt_tokens)
    async with client.responses.stream(
        model="local-chat", input=ask, instructions="You are terse.", max_output_tokens=16, temperature=0
    ) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    # Not compared with `plain`: the second call reuses the first one's prompt prefix in the model's
    # cache, which changes the logits in their last bits, enough to flip a greedy near-tie (the
    # Responses API has no `seed`, which would make the local model evaluate from scratch).
    assert "".join(deltas) == final.output_text and final.output_text
    assert final.usage is not None and final.usage.input_tokens == plain.usage.input_tokens
    assert final.status == plain.status


async def test_http_errors_keep_openais_schema(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post("/v1/responses", json={"model": "bench"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    headers = {"authorization": "Bearer sk-wrong"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy_client.app), base_url="http://t") as http:
        response = await http.post("/v1/responses", json={"model": "bench", "input": "x"}, headers=headers)
    assert response.status_code == 401 and "error" in response.json()


def _tool_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_tool_calls_become_function_call_items() -> None:
    from meshgate.api.responses_api import ResponsesRequest, _EventStream, _output_items, _skeleton, _usage

    call = {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    items = _output_items({"role": "assistant", "content": None, "tool_calls": [call]})
    assert [(i["type"], i.get("call_id"), i.get("name"), i.get("arguments")) for i in items] == [
        ("function_call", "call_9", "weather", '{"city":"Oslo"}')
    ]
    # Streamed: text, then two tool calls whose arguments arrive in pieces.
    body = msgspec.convert({"model": "m", "input": "x"}, ResponsesRequest)
    events = _EventStream(_skeleton(body, "resp_1", 0))
    chunks = [
        _tool_chunk({"role": "assistant", "content": "Checking."}),
        _tool_chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}}]}),
        _tool_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        _tool_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        _tool_chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}),
        _tool_chunk({}, "tool_calls"),
    ]
    raw = b"".join(filter(None, (events.encode(c) for c in chunks))) + events.end(_usage(5, 7))
    parsed = [json.loads(block.split(b"\n")[1].removeprefix(b"data: ")) for block in raw.strip().split(b"\n\n")]
    types = [e["type"] for e in parsed]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    adapter = pydantic.TypeAdapter(openai.types.responses.ResponseStreamEvent)
    for event in parsed:
        adapter.validate_python(event)  # every event strictly valid against the SDK's types
    final = openai.types.responses.Response.model_validate(parsed[-1]["response"])
    assert final.output_text == "Checking."
    calls = [(o.call_id, o.name, o.arguments) for o in final.output if o.type == "function_call"]
    assert calls == [("call_a", "f", '{"a":1}'), ("call_b", "g", "{}")]
    assert final.usage is not None and final.usage.total_tokens == 12


async def test_langchain_use_responses_api(
    proxy_url: str, proxy_client: AppClient, fake_upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    before = len(fake_upstream.requests)
    http = httpx.AsyncClient(timeout=30)  # our own: LangChain's default one is shared per base URL
    chat = langchain_openai.ChatOpenAI(
        model="bench",
        base_url=proxy_url + "/v1",
        api_key=proxy_client.key,
        max_retries=0,
        use_responses_api=True,
        http_async_client=http,
    )
    try:
        answer = await chat.ainvoke([("system", "Be nice."), ("user", "hello there")])
        assert answer.text == "echo: hello there"
        assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 3
        again = await chat.ainvoke([("user", "hello there"), answer, ("user", "once more")])
        assert again.text == "echo: once more"
        pieces = [chunk.text async for chunk in chat.astream("stream this")]
        assert "".join(pieces) == "echo: stream this"
    finally:
        await http.aclose()
    assert len(fake_upstream.requests) - before == 3  # all three went through the gateway to the model
