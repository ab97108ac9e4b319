"""provider: azure-openai against a fake Azure OpenAI resource on loopback (meshgate/testing/fake_azure.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from meshgate.errors import InvalidRequest, RateLimited, UpstreamError
from meshgate.protocol import ChatCompletionRequest, UserMessage
from meshgate.providers.azure_openai import DEFAULT_API_VERSION, PROVIDER, AzureOpenAIConfig
from meshgate.providers.base import CallContext, ChatModel, EmbeddingModel, ProviderContext
from meshgate.testing.fake_azure import FakeAzure
from tests.conftest import AppClient, make_runtime

KEY = "azure-resource-key"
TOKEN = "entra-token-xyz"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAzure]:
    with FakeAzure(api_key=KEY, entra_token=TOKEN) as server:
        yield server


def config(fake: FakeAzure, **fields: Any) -> AzureOpenAIConfig:
    entry: dict[str, Any] = {
        "name": "azure",
        "provider": "azure-openai",
        "endpoint": fake.endpoint + "/",
        "deployment": "gpt-4o",
        "api_key": SecretStr(KEY),
        **fields,
    }
    return AzureOpenAIConfig.model_validate(entry)


@pytest.fixture
async def started() -> AsyncIterator[list[Any]]:
    models: list[Any] = []
    yield models
    for model in models:
        await model.close()


async def chat_model(started: list[Any], cfg: AzureOpenAIConfig) -> ChatModel:
    model = PROVIDER.factory(cfg, ProviderContext(data_dir=Path(".")))
    assert isinstance(model, ChatModel)
    await model.start()
    started.append(model)
    return model


def request(text: str = "hello there", **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="azure", messages=[UserMessage(content=text)], **fields)


CALL = CallContext(request_id="r")


async def test_chat_with_api_key_goes_to_the_deployment_url(fake: FakeAzure, started: list[Any]) -> None:
    model = await chat_model(started, config(fake))
    result = await model.complete(request(seed=3), CALL)
    assert result["choices"][0]["message"]["content"] == "echo: hello there"
    assert result["model"] == "azure"
    assert result["usage"]["total_tokens"] > 0
    call, sent = fake.calls[-1], fake.requests[-1]
    assert (call.deployment, call.operation) == ("gpt-4o", "completions")
    assert call.query == {"api-version": DEFAULT_API_VERSION}
    assert sent.path == "/openai/deployments/gpt-4o/chat/completions"
    assert call.headers["api-key"] == KEY
    assert "Authorization" not in call.headers
    assert sent.body["model"] == "gpt-4o" and sent.body["seed"] == 3 and sent.body["stream"] is False


async def test_streamed_chat_with_an_entra_token(fake: FakeAzure, started: list[Any]) -> None:
    cfg = config(fake, api_key=None, entra_token=SecretStr(TOKEN), api_version="2025-01-01-preview")
    model = await chat_model(started, cfg)
    chunks = [chunk async for chunk in model.stream(request(), CALL)]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: hello there"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["model"] == "azure" for c in chunks)
    call = fake.calls[-1]
    assert call.query == {"api-version": "2025-01-01-preview"}
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "api-key" not in call.headers
    assert fake.requests[-1].path == "/openai/deployments/gpt-4o/chat/completions"
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_embeddings(fake: FakeAzure, started: list[Any]) -> None:
    cfg = config(fake, kind="embedding", deployment="embed-3", capabilities={"embedding_shortening": True})
    model = PROVIDER.factory(cfg, ProviderContext(data_dir=Path(".")))
    assert isinstance(model, EmbeddingModel)
    await model.start()
    started.append(model)
    result = await model.embed(["a b", "c"], CALL, dimensions=4)
    assert [len(v) for v in result.vectors] == [4, 4]
    assert result.prompt_tokens == 3
    call, sent = fake.calls[-1], fake.requests[-1]
    assert sent.path == "/openai/deployments/embed-3/embeddings"
    assert call.query == {"api-version": DEFAULT_API_VERSION}
    assert call.headers["api-key"] == KEY
    assert sent.body["dimensions"] == 4 and sent.body["input"] == ["a b", "c"]


async def test_a_wrong_key_is_a_credentials_error(fake: FakeAzure, started: list[Any]) -> None:
    model = await chat_model(started, config(fake, api_key=SecretStr("wrong")))
    with pytest.raises(UpstreamError) as caught:
        await model.complete(request(), CALL)
    assert caught.value.status == 502 and caught.value.upstream_status == 401
    assert "credentials" in caught.value.message
    with pytest.raises(UpstreamError) as streamed:
        _ = [chunk async for chunk in model.stream(request(), CALL)]
    assert streamed.value.upstream_status == 401


@pytest.mark.parametrize(
    ("behaviour", "error", "status", "upstream_status"),
    [
        ("fail:404", UpstreamError, 502, 404),
        ("fail:500", UpstreamError, 502, 500),
        ("fail:400", InvalidRequest, 400, None),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    fake: FakeAzure,
    started: list[Any],
    behaviour: str,
    error: type[Exception],
    status: int,
    upstream_status: int | None,
) -> None:
    model = await chat_model(started, config(fake, model=behaviour))
    with pytest.raises(error) as caught:
        await model.complete(request(), CALL)
    assert type(caught.value) is error
    assert caught.value.status == status  # type: ignore[attr-defined]
    assert getattr(caught.value, "upstream_status", None) == upstream_status


async def test_429_carries_the_upstreams_retry_after(fake: FakeAzure, started: list[Any]) -> None:
    model = await chat_model(started, config(fake, model="fail:429"))
    with pytest.raises(RateLimited) as caught:
        await model.complete(request(), CALL)
    assert caught.value.retry_after == 7
    with pytest.raises(RateLimited) as streamed:
        _ = [chunk async for chunk in model.stream(request(), CALL)]
    assert streamed.value.retry_after == 7


def test_config_derives_the_url_and_refuses_what_it_cannot_use() -> None:
    cfg = AzureOpenAIConfig.model_validate(
        {"name": "a", "provider": "azure-openai", "endpoint": "https://res.openai.azure.com/", "deployment": "d"}
    )
    assert cfg.base_url == "https://res.openai.azure.com/openai/deployments/d"
    assert cfg.request_path("/chat/completions") == f"/chat/completions?api-version={DEFAULT_API_VERSION}"
    assert cfg.model == "d" and cfg.auth_headers() == {}
    base = {"name": "a", "provider": "azure-openai", "endpoint": "https://res.openai.azure.com", "deployment": "d"}
    for bad in (
        {"base_url": "https://elsewhere/v1"},
        {"endpoint": "res.openai.azure.com"},
        {"api_key": "k", "entra_token": "t"},
    ):
        with pytest.raises(ValidationError):
            AzureOpenAIConfig.model_validate({**base, **bad})


async def test_end_to_end_through_the_gateway(fake: FakeAzure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    runtime = make_runtime(
        tmp_path,
        f"""
        models:
          - name: azure-chat
            provider: azure-openai
            endpoint: {fake.endpoint}
            deployment: prod-gpt
            api_key: ${{AZURE_OPENAI_API_KEY}}
        """,
    )
    client = await AppClient.started(runtime)
    try:
        response = await client.http.post(
            "/v1/chat/completions",
            json={"model": "azure-chat", "messages": [{"role": "user", "content": "hi azure"}]},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "azure-chat"
        assert body["choices"][0]["message"]["content"] == "echo: hi azure"
        async with client.http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "azure-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ) as streamed:
            lines = [line[6:] async for line in streamed.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(line) for line in lines[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "echo: hi"
    finally:
        await client.http.aclose()
        await runtime.stop()
    call = fake.calls[-1]
    assert (call.deployment, call.query, call.headers["api-key"]) == (
        "prod-gpt",
        {"api-version": DEFAULT_API_VERSION},
        KEY,
    )
