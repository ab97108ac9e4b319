"""provider: mistral against a fake Mistral API on loopback (meshgate/testing/fake_mistral.py).

The fake refuses, as Mistral does, fields it does not know (422): OpenAI's `seed`,
`max_completion_tokens`, `stream_options`, `user`; so a rename left undone fails these tests.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from meshgate.errors import InvalidRequest, RateLimited, UpstreamError
from meshgate.protocol import ChatCompletionRequest, UserMessage
from meshgate.providers.base import CallContext, ChatModel, EmbeddingModel, ProviderContext
from meshgate.providers.mistral import PROVIDER, MistralConfig
from meshgate.testing.fake_mistral import FakeMistral
from tests.conftest import AppClient, make_runtime

KEY = "mistral-key"
CALL = CallContext(request_id="r")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeMistral]:
    with FakeMistral(api_key=KEY) as server:
        yield server


def config(fake: FakeMistral, **fields: Any) -> MistralConfig:
    entry: dict[str, Any] = {
        "name": "mistral",
        "provider": "mistral",
        "model": "mistral-small-latest",
        "base_url": fake.base_url,
        "api_key": SecretStr(KEY),
        **fields,
    }
    return MistralConfig.model_validate(entry)


@pytest.fixture
async def started() -> AsyncIterator[list[Any]]:
    models: list[Any] = []
    yield models
    for model in models:
        await model.close()


async def build(started: list[Any], cfg: MistralConfig) -> Any:
    model = PROVIDER.factory(cfg, ProviderContext(data_dir=Path(".")))
    await model.start()
    started.append(model)
    return model


def request(text: str = "hello there", **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="mistral", messages=[UserMessage(content=text)], **fields)


def test_defaults() -> None:
    cfg = MistralConfig.model_validate({"name": "m", "provider": "mistral", "model": "mistral-large-latest"})
    assert cfg.base_url == "https://api.mistral.ai/v1"
    assert cfg.request_path("/chat/completions") == "/chat/completions"
    model = PROVIDER.factory(cfg, ProviderContext(data_dir=Path(".")))
    assert model.profile.chat and not model.profile.logit_bias


async def test_chat_renames_openai_fields(fake: FakeMistral, started: list[Any]) -> None:
    model: ChatModel = await build(started, config(fake))
    result = await model.complete(
        request(seed=42, max_completion_tokens=50, user="u-1", tool_choice="required", temperature=0.2), CALL
    )
    assert result["choices"][0]["message"]["content"] == "echo: hello there"
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["model"] == "mistral"
    assert result["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    sent = fake.calls[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.body["random_seed"] == 42 and "seed" not in sent.body
    assert sent.body["max_tokens"] == 50 and "max_completion_tokens" not in sent.body
    assert sent.body["tool_choice"] == "required" and sent.body["temperature"] == 0.2
    assert "user" not in sent.body and "safe_prompt" not in sent.body
    assert sent.body["model"] == "mistral-small-latest" and sent.body["stream"] is False


async def test_safe_prompt_is_sent_when_configured(fake: FakeMistral, started: list[Any]) -> None:
    model: ChatModel = await build(started, config(fake, safe_prompt=True))
    await model.complete(request(), CALL)
    assert fake.calls[-1].body["safe_prompt"] is True


async def test_streamed_chat_has_usage_without_stream_options(fake: FakeMistral, started: list[Any]) -> None:
    model: ChatModel = await build(started, config(fake))
    chunks = [chunk async for chunk in model.stream(request(seed=1), CALL)]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: hello there"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["model"] == "mistral" for c in chunks)
    sent = fake.calls[-1].body
    assert sent["stream"] is True and "stream_options" not in sent and sent["random_seed"] == 1


async def test_model_length_is_openais_length(fake: FakeMistral, started: list[Any]) -> None:
    model: ChatModel = await build(started, config(fake, model="long"))
    result = await model.complete(request(), CALL)
    assert result["choices"][0]["finish_reason"] == "length"
    chunks = [chunk async for chunk in model.stream(request(), CALL)]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert reasons[-1] == "length" and "model_length" not in reasons


async def test_embeddings(fake: FakeMistral, started: list[Any]) -> None:
    model: EmbeddingModel = await build(started, config(fake, kind="embedding", model="mistral-embed"))
    assert model.profile.embeddings and not model.profile.embedding_token_input
    result = await model.embed(["a b", "c"], CALL)
    assert [len(v) for v in result.vectors] == [1024, 1024]
    assert result.prompt_tokens == 3
    sent = fake.calls[-1]
    assert sent.path == "/v1/embeddings" and sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.body == {"model": "mistral-embed", "input": ["a b", "c"], "encoding_format": "float"}
    shortened = await model.embed(["x"], CALL, dimensions=256)
    assert len(shortened.vectors[0]) == 256
    assert fake.calls[-1].body["output_dimension"] == 256 and "dimensions" not in fake.calls[-1].body


async def test_a_wrong_key_is_a_credentials_error(fake: FakeMistral, started: list[Any]) -> None:
    model: ChatModel = await build(started, config(fake, api_key=SecretStr("wrong")))
    with pytest.raises(UpstreamError) as caught:
        await model.complete(request(), CALL)
    assert caught.value.status == 502 and caught.value.upstream_status == 401
    with pytest.raises(UpstreamError) as streamed:
        _ = [chunk async for chunk in model.stream(request(), CALL)]
    assert streamed.value.upstream_status == 401


@pytest.mark.parametrize(
    ("behaviour", "error", "status", "upstream_status"),
    [
        ("fail:404", UpstreamError, 502, 404),
        ("fail:500", UpstreamError, 502, 500),
        ("fail:400", InvalidRequest, 400, None),
        ("fail:422", InvalidRequest, 400, None),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
async def test_error_statuses_map_to_typed_errors(
    fake: FakeMistral,
    started: list[Any],
    behaviour: str,
    error: type[Exception],
    status: int,
    upstream_status: int | None,
    streamed: bool,
) -> None:
    model: ChatModel = await build(started, config(fake, model=behaviour))
    with pytest.raises(error) as caught:
        if streamed:
            _ = [chunk async for chunk in model.stream(request(), CALL)]
        else:
            await model.complete(request(), CALL)
    assert type(caught.value) is error
    assert caught.value.status == status  # type: ignore[attr-defined]
    assert getattr(caught.value, "upstream_status", None) == upstream_status


async def test_422_validation_detail_reaches_the_message(fake: FakeMistral, started: list[Any]) -> None:
    model: ChatModel = await build(started, config(fake, model="fail:422"))
    with pytest.raises(InvalidRequest) as caught:
        await model.complete(request(), CALL)
    assert "body.messages: Field required" in caught.value.message


async def test_429_carries_retry_after(fake: FakeMistral, started: list[Any]) -> None:
    model: ChatModel = await build(started, config(fake, model="fail:429"))
    with pytest.raises(RateLimited) as caught:
        await model.complete(request(), CALL)
    assert caught.value.retry_after == 7
    with pytest.raises(RateLimited) as streamed:
        _ = [chunk async for chunk in model.stream(request(), CALL)]
    assert streamed.value.retry_after == 7


async def test_end_to_end_through_the_gateway(
    fake: FakeMistral, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    runtime = make_runtime(
        tmp_path,
        f"""
        models:
          - name: le-chat
            provider: mistral
            model: mistral-large-latest
            base_url: {fake.base_url}
            api_key: ${{MISTRAL_API_KEY}}
          - name: le-embed
            provider: mistral
            kind: embedding
            model: mistral-embed
            base_url: {fake.base_url}
            api_key: ${{MISTRAL_API_KEY}}
        """,
    )
    client = await AppClient.started(runtime)
    try:
        messages = [{"role": "user", "content": "bonjour"}]
        response = await client.http.post(
            "/v1/chat/completions", json={"model": "le-chat", "messages": messages, "seed": 9, "max_tokens": 20}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "le-chat"
        assert body["choices"][0]["message"]["content"] == "echo: bonjour"
        assert fake.calls[-1].body["random_seed"] == 9
        async with client.http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "le-chat", "messages": messages, "stream": True, "stream_options": {"include_usage": True}},
        ) as streamed:
            lines = [line[6:] async for line in streamed.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(line) for line in lines[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "echo: bonjour"
        assert chunks[-1]["usage"]["completion_tokens"] == 2
        embedded = await client.http.post("/v1/embeddings", json={"model": "le-embed", "input": ["a", "b c"]})
        assert embedded.status_code == 200, embedded.text
        assert [row["index"] for row in embedded.json()["data"]] == [0, 1]
        assert fake.calls[-1].path == "/v1/embeddings"
    finally:
        await client.http.aclose()
        await runtime.stop()
