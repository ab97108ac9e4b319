"""The semantic mode with the real local-embed model: paraphrases hit, close but different questions
never do (bench/cache.py measures the threshold on more pairs)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI) -> AsyncIterator[AppClient]:
    def model(name: str, cache: str = "") -> str:
        return f"""
          - name: {name}
            provider: openai-compatible
            model: echo
            base_url: {fake_upstream.base_url}
            api_key: ${{TEST_UPSTREAM_KEY}}
            {cache}"""

    yaml_text = textwrap.dedent(
        """
        cache: {mode: exact, ttl: 1h, backend: memory}
        models:
          - name: local-embed
            provider: local-embedding"""
        + model("chat", "cache: {mode: semantic, threshold: 0.95}")
        + model("strict", "cache: {mode: semantic, threshold: 0.995}")
        + model("plain")
        + "\n"
    )
    runtime = make_runtime(tmp_path_factory.mktemp("semantic"), yaml_text, auth=False)
    await runtime.start()
    made = AppClient(runtime)
    yield made
    await made.http.aclose()
    await runtime.stop()


async def ask(
    client: AppClient, text: str, model: str = "chat", system: str | None = None, **kw: Any
) -> tuple[str, str]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    response = await client.http.post(
        "/v1/chat/completions", json={"model": model, "messages": messages, "temperature": 0, **kw}
    )
    assert response.status_code == 200, response.text
    step = next(s for s in client.runtime.pipeline.steps if s.name == "cache")
    await step.cache.flush()  # type: ignore[attr-defined]
    if kw.get("stream"):
        return response.text, response.headers["x-meshgate-cache"]
    return response.json()["choices"][0]["message"]["content"], response.headers["x-meshgate-cache"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("How do I reset my password?", "How can I reset my password?"),
        ("How do I cancel my subscription?", "What do I do to cancel my subscription?"),
    ],
)
async def test_a_paraphrase_hits(client: AppClient, first: str, second: str) -> None:
    assert await ask(client, first) == (f"echo: {first}", "miss")
    assert await ask(client, second) == (f"echo: {first}", "semantic-hit")
    assert await ask(client, first) == (f"echo: {first}", "hit")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Convert Celsius to Fahrenheit.", "Convert Fahrenheit to Celsius."),  # 0.99: word order
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),  # 0.99: negation
        ("How many days are in February 2024?", "How many days are in February 2023?"),  # 0.96: numbers
        ("What are your opening hours on Monday?", "What are your opening hours on Sunday?"),  # 0.948
        ("When did World War II start?", "When did World War II end?"),
        ("What is the capital of France?", "What is the capital of Germany?"),
    ],
)
async def test_close_but_different_questions_never_hit(client: AppClient, first: str, second: str) -> None:
    assert await ask(client, first) == (f"echo: {first}", "miss")
    assert await ask(client, second) == (f"echo: {second}", "miss")


async def test_the_rest_of_the_conversation_must_match(client: AppClient) -> None:
    first, second = "How do I track my order?", "How can I track my order?"
    assert (await ask(client, first, system="You are a shop assistant."))[1] == "miss"
    assert (await ask(client, second, system="You are a pirate."))[1] == "miss"  # other system prompt
    assert (await ask(client, second, system="You are a shop assistant.", max_tokens=50))[1] == "miss"
    assert (await ask(client, second, system="You are a shop assistant."))[1] == "semantic-hit"


async def test_thresholds_and_modes_per_model(client: AppClient) -> None:
    first, second = "How do I upgrade my plan?", "How can I upgrade my plan?"  # 0.992
    assert (await ask(client, first, "strict"))[1] == "miss"
    assert (await ask(client, second, "strict"))[1] == "miss"  # under its own 0.995
    assert (await ask(client, first, "plain"))[1] == "miss"
    assert (await ask(client, second, "plain"))[1] == "miss"  # the default mode: exact only
    assert (await ask(client, first, "plain"))[1] == "hit"


async def test_a_stream_is_answered_by_a_paraphrase(client: AppClient) -> None:
    first, second = "How do I delete my account?", "How can I delete my account?"
    text, kind = await ask(client, first, stream=True)
    assert kind == "miss" and "data: [DONE]" in text
    replay, kind = await ask(client, second, stream=True)
    assert kind == "semantic-hit" and '"do ' in replay and replay.count("data: ") == text.count("data: ")
