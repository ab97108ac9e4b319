"""POST /v1/completions (legacy text completions) through the chat pipeline, with the `openai` SDK."""

from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI

from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient

pytestmark = pytest.mark.timeout(120)


def sdk(base_url: str, key: str | None) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url + "/v1", api_key=key or "none", max_retries=0)


async def test_plain_completion(proxy_url: str, proxy_client: AppClient, fake_upstream: FakeOpenAI) -> None:
    client = sdk(proxy_url, proxy_client.key)
    completion = await client.completions.create(model="bench", prompt="once upon", max_tokens=50, stop=["\n"])
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.model == "bench"
    assert [c.text for c in completion.choices] == ["echo: once upon"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3
    # The prompt went as one user message, with the parameters passed on.
    body = [r for r in fake_upstream.requests if r.path.endswith("/chat/completions")][-1].body
    assert body["messages"] == [{"role": "user", "content": "once upon"}]
    assert body["max_tokens"] == 50 and body["stop"] == ["\n"]


async def test_max_tokens_cuts_with_finish_reason_length(proxy_url: str, proxy_client: AppClient) -> None:
    client = sdk(proxy_url, proxy_client.key)
    completion = await client.completions.create(model="bench", prompt=["a b c d e"], max_tokens=2)
    assert completion.choices[0].text == "echo: a"
    assert completion.choices[0].finish_reason == "length"


async def test_streamed_completion(proxy_url: str, proxy_client: AppClient) -> None:
    client = sdk(proxy_url, proxy_client.key)
    stream = await client.completions.create(
        model="bench", prompt="stream me", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "text_completion" for chunk in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: stream me"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1
    # Without include_usage no usage chunk.
    stream = await client.completions.create(model="bench", prompt="no usage", stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == "echo: no usage"


async def test_refused_parameters(proxy_client: AppClient) -> None:
    for extra, param, code in [
        ({"prompt": ["one", "two"]}, "prompt", "invalid_value"),
        ({"prompt": [1, 2, 3]}, "prompt", "invalid_value"),
        ({"echo": True}, "echo", "unsupported_parameter"),
        ({"suffix": "end"}, "suffix", "unsupported_parameter"),
        ({"logprobs": 2}, "logprobs", "unsupported_parameter"),
        ({"best_of": 3}, "best_of", "unsupported_parameter"),
        ({"nope": 1}, "nope", "unknown_parameter"),
        ({"temperature": 9}, "temperature", "invalid_value"),
    ]:
        body = {"model": "bench", "prompt": "hi", **extra}
        response = await proxy_client.http.post("/v1/completions", json=body)
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, code), extra
    # What is trivially supported passes.
    body = {"model": "bench", "prompt": "hi", "echo": False, "best_of": 1}
    response = await proxy_client.http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text


async def test_unknown_model_is_404(proxy_url: str, proxy_client: AppClient) -> None:
    client = sdk(proxy_url, proxy_client.key)
    with pytest.raises(openai.NotFoundError) as refused:
        await client.completions.create(model="no-such-model", prompt="hi")
    assert refused.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="no-such-model", prompt="hi", stream=True)


@pytest.mark.slow
async def test_local_model(local_client: AppClient) -> None:
    response = await local_client.http.post(
        "/v1/completions", json={"model": "local-chat", "prompt": "Say hi.", "max_tokens": 8, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"]
    assert 1 <= body["usage"]["completion_tokens"] <= 8
