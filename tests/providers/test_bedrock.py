"""The bedrock provider against a fake Bedrock runtime API served on loopback (meshgate/testing/fake_bedrock.py).

The fake verifies every SigV4 signature from the bytes it receives, so a request it answers was signed
right; it checks the Converse request's shape as Bedrock does and streams real event-stream frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import openai
import pydantic
import pytest

from meshgate.errors import (
    ConfigError,
    InvalidRequest,
    Overloaded,
    RateLimited,
    UnsupportedParameter,
    UpstreamError,
    UpstreamTimeout,
)
from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.base import CallContext, ProviderContext
from meshgate.providers.bedrock import BedrockChat, BedrockConfig, BedrockEmbedding, embedding_api_for, map_error
from meshgate.testing.fake_bedrock import TOOL_INPUTS, FakeBedrock, fake_vector
from tests.conftest import AppClient, make_runtime

KEY_ID = "AKIAFAKEBEDROCK00001"
SECRET = "fake/Secret+Access+Key/0123456789abcdefghij"
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1mYWtl"
REGION = "eu-central-1"
CREDENTIALS = {"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET}
ARN = "arn:aws:bedrock:eu-central-1:123456789012:application-inference-profile/echo"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock(region=REGION, access_key_id=KEY_ID, secret_access_key=SECRET, api_key=API_KEY) as server:
        yield server


@pytest.fixture()
async def make_model(fake: FakeBedrock, tmp_path: Path) -> AsyncIterator[Any]:
    models: list[Any] = []

    async def make(upstream: str = "echo", base_url: str | None = None, **extra: Any) -> Any:
        entry = {"name": "claude", "provider": "bedrock", "model": upstream, "region": REGION}
        entry["base_url"] = base_url or fake.base_url
        if "api_key" not in extra:
            entry |= CREDENTIALS
        config = BedrockConfig.model_validate(entry | extra)
        model: Any = (BedrockEmbedding if config.kind == "embedding" else BedrockChat)(
            config, ProviderContext(data_dir=tmp_path)
        )
        await model.start()
        models.append(model)
        return model

    yield make
    for model in models:
        await model.close()


def req(messages: list[dict[str, Any]], **fields: Any) -> ChatCompletionRequest:
    return msgspec.convert({"model": "claude", "messages": messages, **fields}, ChatCompletionRequest)


async def collect(model: BedrockChat, request: ChatCompletionRequest, call: CallContext | None = None) -> list[Any]:
    return [chunk async for chunk in model.stream(request, call or CallContext("r1"))]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


HELLO = [{"role": "user", "content": "hello there world"}]
WEATHER_TOOL = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


async def test_plain_completion_signed_and_exact_wire(make_model: Any, fake: FakeBedrock) -> None:
    model = await make_model()
    call = CallContext("r1")
    result = await model.complete(req(HELLO), call)
    choice = result["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "echo: hello there world", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert result["object"] == "chat.completion" and result["model"] == "claude"
    # The fake counts words + 3 per message as input, the answer's words as output.
    assert result["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (call.prompt_tokens, call.completion_tokens) == (6, 4)
    sent = fake.requests[-1]
    assert sent.raw_path == "/model/echo/converse" and sent.action == "converse"
    assert sent.body == {"messages": [{"role": "user", "content": [{"text": "hello there world"}]}]}
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/{headers['x-amz-date'][:8]}/{REGION}/bedrock/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="
    )
    assert headers["x-amz-content-sha256"] == hashlib.sha256(json.dumps(sent.body).encode()).hexdigest()
    assert headers["content-type"] == "application/json" and headers["accept"] == "application/json"
    assert "x-amz-security-token" not in headers
    assert result["id"].startswith("chatcmpl-") and len(result["id"]) == len("chatcmpl-") + 36  # the request id


@pytest.mark.parametrize(
    ("upstream", "raw_path"),
    [
        ("echo-v1:0", "/model/echo-v1%3A0/converse"),
        (
            ARN,
            "/model/arn%3Aaws%3Abedrock%3Aeu-central-1%3A123456789012%3Aapplication-inference-profile%2Fecho/converse",
        ),
    ],
)
async def test_model_ids_and_arns_are_encoded_and_signed(
    make_model: Any, fake: FakeBedrock, upstream: str, raw_path: str
) -> None:
    model = await make_model(upstream)
    result = await model.complete(req(HELLO), CallContext("r"))  # the fake verified the signature over the path
    assert result["choices"][0]["message"]["content"] == "echo: hello there world"
    assert fake.requests[-1].raw_path == raw_path and fake.requests[-1].model_id == upstream
    chunks = await collect(model, req(HELLO))
    assert text_of(chunks) == "echo: hello there world"
    assert fake.requests[-1].raw_path == raw_path.replace("/converse", "/converse-stream")


async def test_wrong_credentials_are_refused_by_the_signature_check(make_model: Any, fake: FakeBedrock) -> None:
    cases = [
        ({"aws_secret_access_key": "not-the-secret"}, "InvalidSignatureException"),
        ({"aws_access_key_id": "AKIAUNKNOWN000000000"}, "UnrecognizedClientException"),
        ({"region": "us-west-2", "base_url": fake.base_url}, "InvalidSignatureException"),
    ]
    for extra, kind in cases:
        model = await make_model(**extra)
        for streamed in (False, True):
            with pytest.raises(UpstreamError) as caught:
                if streamed:
                    await collect(model, req(HELLO))
                else:
                    await model.complete(req(HELLO), CallContext("r"))
            assert type(caught.value) is UpstreamError and caught.value.status == 502
            assert caught.value.upstream_status == 403
            assert kind in caught.value.message and "credentials" in caught.value.message
            assert SECRET not in caught.value.message


async def test_temporary_credentials_send_the_session_token(tmp_path: Path) -> None:
    token = "IQoJb3JpZ2luX2VjEFAKE//token+value="
    with FakeBedrock(region=REGION, access_key_id=KEY_ID, secret_access_key=SECRET, session_token=token) as fake:
        models = []
        for session_token in (token, None):
            entry = {"name": "c", "provider": "bedrock", "model": "echo", "region": REGION, "base_url": fake.base_url}
            entry |= CREDENTIALS | ({"aws_session_token": session_token} if session_token else {})
            model = BedrockChat(BedrockConfig.model_validate(entry), ProviderContext(data_dir=tmp_path))
            await model.start()
            models.append(model)
        try:
            result = await models[0].complete(req(HELLO), CallContext("r"))
            assert result["choices"][0]["message"]["content"] == "echo: hello there world"
            headers = {k.lower(): v for k, v in fake.requests[-1].headers.items()}
            assert headers["x-amz-security-token"] == token
            assert (
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token," in headers["authorization"]
            )
            with pytest.raises(UpstreamError, match="UnrecognizedClientException"):
                await models[1].complete(req(HELLO), CallContext("r"))
        finally:
            for model in models:
                await model.close()


async def test_bedrock_api_key_as_bearer_token(make_model: Any, fake: FakeBedrock) -> None:
    model = await make_model(api_key=API_KEY)
    result = await model.complete(req(HELLO), CallContext("r"))
    assert result["choices"][0]["message"]["content"] == "echo: hello there world"
    headers = {k.lower(): v for k, v in fake.requests[-1].headers.items()}
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert not any(name.startswith("x-amz-") for name in headers)
    assert text_of(await collect(model, req(HELLO))) == "echo: hello there world"
    wrong = await make_model(api_key="ABSK-wrong")
    with pytest.raises(UpstreamError, match="UnrecognizedClientException") as caught:
        await wrong.complete(req(HELLO), CallContext("r"))
    assert caught.value.upstream_status == 403


async def test_request_translation(make_model: Any, fake: FakeBedrock) -> None:
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
        temperature=0.5,
        top_p=0.9,
        max_completion_tokens=50,
        tools=[
            {"type": "function", "function": {"name": "look", "description": "Look", "parameters": {"type": "object"}}}
        ],
        tool_choice={"type": "function", "function": {"name": "look"}},
    )
    await model.complete(request, CallContext("r1"))
    assert fake.requests[-1].body == {
        "messages": [
            {"role": "user", "content": [{"text": "hi"}]},
            {"role": "assistant", "content": [{"text": "Hello."}]},
            {
                "role": "user",
                "content": [
                    {"text": "what is this"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                ],
            },
        ],
        "system": [{"text": "Be brief."}, {"text": "Use French."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END", "STOP"]},
        "toolConfig": {
            "tools": [
                {"toolSpec": {"name": "look", "description": "Look", "inputSchema": {"json": {"type": "object"}}}}
            ],
            "toolChoice": {"tool": {"name": "look"}},
        },
    }
    for choice, expected in (("auto", {"auto": {}}), ("required", {"any": {}})):
        await model.complete(req(HELLO, tools=WEATHER_TOOL, tool_choice=choice), CallContext("r"))
        assert fake.requests[-1].body["toolConfig"]["toolChoice"] == expected
    await model.complete(req(HELLO, tools=WEATHER_TOOL, tool_choice="none"), CallContext("r"))
    assert "toolConfig" not in fake.requests[-1].body  # no tools offered: none can be called

    count = len(fake.requests)
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    tiff = [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]
    for bad in (req([{"role": "user", "content": remote}]), req([{"role": "user", "content": tiff}])):
        with pytest.raises(UnsupportedParameter):
            await model.complete(bad, CallContext("r"))
    with pytest.raises(UnsupportedParameter, match="parallel"):
        await model.complete(req(HELLO, tools=WEATHER_TOOL, parallel_tool_calls=False), CallContext("r"))
    assert len(fake.requests) == count  # refused before any call


async def test_tool_calls_keep_their_ids_and_results_round_trip(make_model: Any, fake: FakeBedrock) -> None:
    tool_model = await make_model("tool-weather")
    result = await tool_model.complete(req(HELLO, tools=WEATHER_TOOL), CallContext("r"))
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    calls = choice["message"]["tool_calls"]
    assert [c["type"] for c in calls] == ["function", "function"]
    assert [c["function"]["name"] for c in calls] == ["weather", "weather"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == TOOL_INPUTS
    answered = fake.answers[-1]["output"]["message"]["content"]
    upstream_ids = [b["toolUse"]["toolUseId"] for b in answered if "toolUse" in b]
    assert [c["id"] for c in calls] == upstream_ids and all(i.startswith("tooluse_") for i in upstream_ids)

    model = await make_model()
    messages = [
        *HELLO,
        choice["message"],
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": '{"temp": 20}'},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
    ]
    answer = await model.complete(req(messages, tools=WEATHER_TOOL), CallContext("r"))  # the fake checks the ids
    assert answer["choices"][0]["message"]["content"] == 'results: {"temp": 20} | sunny'
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": calls[0]["id"], "name": "weather", "input": TOOL_INPUTS[0]}},
        {"toolUse": {"toolUseId": calls[1]["id"], "name": "weather", "input": TOOL_INPUTS[1]}},
    ]
    assert sent[2]["content"] == [
        {"toolResult": {"toolUseId": calls[1]["id"], "content": [{"text": '{"temp": 20}'}]}},
        {"toolResult": {"toolUseId": calls[0]["id"], "content": [{"text": "sunny"}]}},
    ]
    # A result that answers no call is Bedrock's 400, passed on as one.
    with pytest.raises(InvalidRequest, match="toolResult"):
        bad = [*messages[:2], {"role": "tool", "tool_call_id": "tooluse_nope", "content": "x"}]
        await model.complete(req(bad, tools=WEATHER_TOOL), CallContext("r"))
    # tool_choice "none" cannot be said to Converse once the conversation has tool blocks.
    with pytest.raises(UnsupportedParameter, match="tool_choice"):
        await model.complete(req(messages, tools=WEATHER_TOOL, tool_choice="none"), CallContext("r"))


async def test_finish_reasons_and_usage(make_model: Any) -> None:
    model = await make_model()
    result = await model.complete(req([{"role": "user", "content": "a b c d e"}], max_tokens=3), CallContext("r"))
    assert (result["choices"][0]["finish_reason"], result["choices"][0]["message"]["content"]) == (
        "length",
        "echo: a b",
    )
    assert result["usage"]["completion_tokens"] == 3
    result = await model.complete(req([{"role": "user", "content": "one two END three"}], stop="END"), CallContext("r"))
    assert (result["choices"][0]["finish_reason"], result["choices"][0]["message"]["content"]) == (
        "stop",
        "echo: one two ",
    )
    chunks = await collect(model, req([{"role": "user", "content": "a b c d e"}], max_tokens=2))
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    for upstream in ("guardrail", "filtered"):
        filtered = await make_model(upstream)
        result = await filtered.complete(req(HELLO), CallContext("r"))
        assert result["choices"][0]["finish_reason"] == "content_filter", upstream
        chunks = await collect(filtered, req(HELLO))
        assert chunks[-2]["choices"][0]["finish_reason"] == "content_filter", upstream
    cached = await make_model("cached")
    call = CallContext("r")
    result = await cached.complete(req(HELLO), call)
    # Bedrock's inputTokens leave out the cached ones; OpenAI's prompt_tokens count them.
    assert result["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    assert (call.prompt_tokens, call.completion_tokens) == (11, 4)
    chunks = await collect(cached, req(HELLO))
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


async def test_stream_text(make_model: Any, fake: FakeBedrock) -> None:
    model = await make_model()
    call = CallContext("r1")
    chunks = await collect(model, req(HELLO), call)
    sent = fake.requests[-1]
    assert sent.raw_path == "/model/echo/converse-stream"
    assert {k.lower(): v for k, v in sent.headers.items()}["accept"] == "application/vnd.amazon.eventstream"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert all(c["model"] == "claude" for c in chunks)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]] == ["echo:", " hello", " there", " world"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (call.prompt_tokens, call.completion_tokens) == (6, 4)
    assert len(chunks) == 7


async def test_stream_tool_calls_as_openai_streams_them(make_model: Any) -> None:
    model = await make_model("tool-weather")
    chunks = await collect(model, req(HELLO, tools=WEATHER_TOOL))
    deltas = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    starts = [d for d in deltas if "id" in d]
    assert [(d["index"], d["type"], d["function"]) for d in starts] == [
        (0, "function", {"name": "weather", "arguments": ""}),
        (1, "function", {"name": "weather", "arguments": ""}),
    ]
    assert all(d["id"].startswith("tooluse_") for d in starts) and starts[0]["id"] != starts[1]["id"]
    pieces = [d for d in deltas if "id" not in d]
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in pieces)
    assert len(pieces) > 4  # the input arrived in pieces and went out in pieces
    for index in (0, 1):
        arguments = "".join(d["function"]["arguments"] for d in pieces if d["index"] == index)
        assert json.loads(arguments) == TOOL_INPUTS[index]
    assert text_of(chunks) == "Let me check."
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 9


ERRORS = [
    ("ThrottlingException", RateLimited, 429, 429),
    ("ServiceQuotaExceededException", RateLimited, 429, 400),
    ("ValidationException", InvalidRequest, 400, 400),
    ("AccessDeniedException", UpstreamError, 502, 403),
    ("ResourceNotFoundException", UpstreamError, 502, 404),
    ("ModelTimeoutException", UpstreamTimeout, 504, 408),
    ("ServiceUnavailableException", Overloaded, 503, 503),
    ("ModelNotReadyException", Overloaded, 503, 429),
    ("ModelErrorException", UpstreamError, 502, 424),
    ("InternalServerException", UpstreamError, 502, 500),
]


@pytest.mark.parametrize(("kind", "error", "status", "upstream_status"), ERRORS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_error_mapping(
    make_model: Any, kind: str, error: type, status: int, upstream_status: int, streamed: bool
) -> None:
    model = await make_model(f"fail-{kind}")
    with pytest.raises(error) as caught:
        if streamed:
            await collect(model, req(HELLO))
        else:
            await model.complete(req(HELLO), CallContext("r"))
    assert type(caught.value) is error and caught.value.status == status
    assert f"fake failure {kind}" in caught.value.message or error is UpstreamError
    assert "AWS request id" in caught.value.message or "credentials" in caught.value.message
    if isinstance(caught.value, RateLimited | Overloaded):
        assert caught.value.headers() == {"retry-after": "1"}
    if isinstance(caught.value, UpstreamError):
        assert caught.value.upstream_status == upstream_status
        assert caught.value.provider == "bedrock"


def test_map_error_by_type_then_status_never_by_text() -> None:
    assert type(map_error("b", 429, "", "", {"retry-after": "3"})) is RateLimited
    assert map_error("b", 429, "", "", {"retry-after": "3"}).headers() == {"retry-after": "3"}
    assert type(map_error("b", 503, "", "")) is Overloaded
    assert type(map_error("b", 400, "", "")) is InvalidRequest
    assert type(map_error("b", 408, "", "")) is UpstreamTimeout
    assert type(map_error("b", 500, "", "")) is UpstreamError
    # Every spelling of the type: the header with its namespace URL, `__type`, an exception frame's.
    assert type(map_error("b", 500, "ThrottlingException:http://internal.amazon.com/coral/", "")) is RateLimited
    assert type(map_error("b", 500, "com.amazon.coral.validate#ValidationException", "")) is InvalidRequest
    assert type(map_error("b", None, "serviceUnavailableException", "")) is Overloaded
    # The type wins over the status, and the message text decides nothing.
    assert type(map_error("b", 400, "ThrottlingException", "Validation failed: too many tokens")) is RateLimited
    # A type this version does not know goes by its status.
    assert type(map_error("b", 429, "SomeNewException", "")) is RateLimited
    assert "(SomeNewException)" in map_error("b", 500, "SomeNewException", "").message


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("ThrottlingException", RateLimited),
        ("ModelStreamErrorException", UpstreamError),
        ("ValidationException", InvalidRequest),
        ("ServiceUnavailableException", Overloaded),
        ("InternalServerException", UpstreamError),
    ],
)
async def test_mid_stream_exception_frame(make_model: Any, kind: str, error: type) -> None:
    model = await make_model(f"streamfail-{kind}")
    seen: list[dict[str, Any]] = []
    with pytest.raises(error) as caught:
        async for chunk in model.stream(req(HELLO), CallContext("r")):
            seen.append(chunk)
    assert type(caught.value) is error
    assert f"fake stream failure {kind}" in caught.value.message
    assert [c["choices"][0]["delta"] for c in seen] == [{"role": "assistant", "content": ""}, {"content": "echo:"}]


async def test_corrupt_or_cut_streams_are_upstream_errors(make_model: Any) -> None:
    for upstream, reason in (("corrupt", "corrupt event-stream frame"), ("cut", "inside a frame")):
        model = await make_model(upstream)
        seen: list[dict[str, Any]] = []
        with pytest.raises(UpstreamError, match=reason) as caught:
            async for chunk in model.stream(req(HELLO), CallContext("r")):
                seen.append(chunk)
        assert type(caught.value) is UpstreamError and caught.value.status == 502
        assert text_of(seen) == "echo:"


async def test_stream_is_incremental_and_closing_it_closes_the_connection(make_model: Any, fake: FakeBedrock) -> None:
    model = await make_model("hang")
    before = fake.disconnects
    stream = model.stream(req(HELLO), CallContext("r"))
    # The fake sends two events and then waits for the client: the chunks arrive before the body ends.
    first = await asyncio.wait_for(stream.__anext__(), 5)
    second = await asyncio.wait_for(stream.__anext__(), 5)
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert second["choices"][0]["delta"] == {"content": "echo:"}
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(100):
        if fake.disconnects > before:
            break
        await asyncio.sleep(0.05)
    assert fake.disconnects == before + 1


async def test_titan_v2_embeddings(make_model: Any, fake: FakeBedrock) -> None:
    model = await make_model("amazon.titan-embed-text-v2:0", kind="embedding")
    assert model.profile.embeddings and not model.profile.chat
    assert (model.profile.embedding_dimensions, model.profile.embedding_shortening) == (1024, True)
    call = CallContext("r")
    result = await model.embed(["hi", "hello world"], call)
    assert result.vectors == [fake_vector("hi", 1024), fake_vector("hello world", 1024)]
    assert result.prompt_tokens == call.prompt_tokens == 1 + 2
    sent = fake.requests[-2:]
    assert {s.raw_path for s in sent} == {"/model/amazon.titan-embed-text-v2%3A0/invoke"}
    assert sorted(json.dumps(s.body, sort_keys=True) for s in sent) == sorted(
        json.dumps({"inputText": t, "normalize": True}, sort_keys=True) for t in ("hi", "hello world")
    )
    result = await model.embed(["hi"], CallContext("r"), dimensions=256)
    assert result.vectors == [fake_vector("hi", 256)]
    assert fake.requests[-1].body == {"inputText": "hi", "normalize": True, "dimensions": 256}
    with pytest.raises(InvalidRequest, match="dimensions"):
        await model.embed(["hi"], CallContext("r"), dimensions=100)  # Bedrock's ValidationException
    failing = await make_model("fail-ThrottlingException", kind="embedding", embedding_api="titan-v2")
    with pytest.raises(RateLimited):
        await failing.embed(["hi"], CallContext("r"))


async def test_cohere_embeddings_in_batches_with_the_token_header(make_model: Any, fake: FakeBedrock) -> None:
    model = await make_model("cohere.embed-multilingual-v3", kind="embedding", input_type="search_query")
    assert (model.profile.embedding_dimensions, model.profile.embedding_shortening) == (None, False)
    texts = [f"text number {i}" for i in range(100)]
    call = CallContext("r")
    result = await model.embed(texts, call)
    assert result.vectors == [fake_vector(t, 1024) for t in texts]
    assert result.prompt_tokens == call.prompt_tokens == 300  # from X-Amzn-Bedrock-Input-Token-Count
    sent = fake.requests[-2:]
    assert sorted(len(s.body["texts"]) for s in sent) == [4, 96]
    assert all(s.body["input_type"] == "search_query" and set(s.body) == {"texts", "input_type"} for s in sent)
    assert {s.raw_path for s in sent} == {"/model/cohere.embed-multilingual-v3/invoke"}


def test_embedding_api_table_and_config_checks() -> None:
    assert embedding_api_for("amazon.titan-embed-text-v2:0") == "titan-v2"
    assert embedding_api_for("amazon.titan-embed-text-v1") == "titan-v1"
    assert embedding_api_for("us.cohere.embed-v4:0") == "cohere"
    assert embedding_api_for("arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-english-v3") == "cohere"
    assert embedding_api_for("anthropic.claude-3-haiku-20240307-v1:0") is None
    base = {"name": "e", "provider": "bedrock", "region": "us-east-1", **CREDENTIALS}
    with pytest.raises(pydantic.ValidationError, match="set embedding_api"):
        BedrockConfig.model_validate({**base, "model": ARN, "kind": "embedding"})
    config = BedrockConfig.model_validate({**base, "model": ARN, "kind": "embedding", "embedding_api": "cohere"})
    assert config.embedding_api == "cohere"
    assert config.base_url == "https://bedrock-runtime.us-east-1.amazonaws.com"
    fips = BedrockConfig.model_validate(
        {**base, "model": "m", "base_url": "https://bedrock-runtime-fips.{region}.amazonaws.com"}
    )
    assert fips.base_url == "https://bedrock-runtime-fips.us-east-1.amazonaws.com"
    with pytest.raises(pydantic.ValidationError, match="not both"):
        BedrockConfig.model_validate({**base, "model": "m", "api_key": "k"})
    with pytest.raises(pydantic.ValidationError, match="or api_key"):
        BedrockConfig.model_validate({"name": "e", "provider": "bedrock", "region": "us-east-1", "model": "m"})
    with pytest.raises(pydantic.ValidationError, match="region"):
        BedrockConfig.model_validate({**base, "model": "m", "region": "mars"})
    assert BedrockConfig.model_validate({**base, "model": "m", "aws_session_token": "t"}).aws_session_token


async def test_unreachable_is_upstream_error(make_model: Any) -> None:
    model = await make_model(base_url="http://127.0.0.1:9")
    with pytest.raises(UpstreamError, match="unreachable"):
        await model.complete(req(HELLO), CallContext("r"))


async def test_end_to_end_through_the_gateway_with_the_openai_sdk(
    fake: FakeBedrock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("TEST_AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("TEST_BEDROCK_API_KEY", API_KEY)
    runtime = make_runtime(
        tmp_path,
        f"""
        models:
          - name: claude
            provider: bedrock
            model: "tool-weather:0"
            region: {REGION}
            base_url: {fake.base_url}
            aws_access_key_id: ${{TEST_AWS_ACCESS_KEY_ID}}
            aws_secret_access_key: ${{TEST_AWS_SECRET_ACCESS_KEY}}
          - name: titan
            provider: bedrock
            kind: embedding
            model: amazon.titan-embed-text-v2:0
            region: {REGION}
            base_url: {fake.base_url}
            api_key: ${{TEST_BEDROCK_API_KEY}}
        """,
    )
    client = await AppClient.started(runtime)
    sdk = openai.AsyncOpenAI(
        base_url="http://meshgate.test/v1", api_key=client.key or "unused", http_client=client.http, max_retries=0
    )
    try:
        tools: Any = WEATHER_TOOL
        messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "weather?"}]
        answer = await sdk.chat.completions.create(model="claude", messages=messages, tools=tools)
        assert answer.choices[0].finish_reason == "tool_calls"
        calls = answer.choices[0].message.tool_calls or []
        assert len(calls) == 2 and all(c.id.startswith("tooluse_") for c in calls)
        assert [json.loads(c.function.arguments) for c in calls] == TOOL_INPUTS  # type: ignore[union-attr]
        assert answer.usage is not None and answer.usage.completion_tokens == 9
        assert fake.requests[-1].raw_path == "/model/tool-weather%3A0/converse"
        assert fake.requests[-1].body["system"] == [{"text": "Be brief."}]

        stream = await sdk.chat.completions.create(
            model="claude", messages=messages, tools=tools, stream=True, stream_options={"include_usage": True}
        )
        ids, finish, usage, arguments = [], None, None, {0: "", 1: ""}
        async for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or ():
                    ids += [delta.id] if delta.id else []
                    arguments[delta.index] += (delta.function.arguments or "") if delta.function else ""
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        assert len(ids) == 2 and finish == "tool_calls"
        assert [json.loads(arguments[i]) for i in (0, 1)] == TOOL_INPUTS
        assert usage is not None and usage.completion_tokens == 9

        embeddings = await sdk.embeddings.create(model="titan", input=["hi", "there"], dimensions=512)
        assert [e.embedding[:2] for e in embeddings.data] == [[2.0, 3.0], [5.0, 6.0]]
        assert [len(e.embedding) for e in embeddings.data] == [512, 512]

        with pytest.raises(openai.BadRequestError):  # one choice only: refused, not dropped
            await sdk.chat.completions.create(model="claude", messages=messages, n=2)
        with pytest.raises(openai.BadRequestError):  # no seed on Converse
            await sdk.chat.completions.create(model="claude", messages=messages, seed=1)
        assert caplog.records and SECRET not in caplog.text and API_KEY not in caplog.text
    finally:
        await client.http.aclose()
        await runtime.stop()


def test_credentials_must_be_env_references(tmp_path: Path) -> None:
    entry = "models:\n  - name: b\n    provider: bedrock\n    model: m\n    region: us-east-1\n"
    with pytest.raises(ConfigError, match="aws_secret_access_key: secrets are not written in the file"):
        make_runtime(
            tmp_path,
            entry + "    aws_access_key_id: ${TEST_UPSTREAM_KEY}\n    aws_secret_access_key: literal-secret\n",
        )
    with pytest.raises(ConfigError, match="api_key: secrets are not written in the file"):
        make_runtime(tmp_path, entry + "    api_key: ABSK-literal\n")
    with pytest.raises(ConfigError, match="or api_key"):
        make_runtime(tmp_path, entry)
