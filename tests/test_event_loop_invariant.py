"""The event loop never waits on a request's size: /healthz answers in milliseconds while a huge
request is in flight (docs/architecture.md, "The event loop never waits on a request's size")."""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import msgspec

from tests.conftest import AppClient
from tests.test_api_errors import assert_openai_error

#: Far from both sides on this noisy machine: /healthz takes about a millisecond, and the stalled
#: loop made it take 2 to 6 seconds (the tests failed on the old code with 4318, 2063 and 5681 ms).
HEALTHZ_BOUND = 0.5
JSON = {"content-type": "application/json"}
T = TypeVar("T")


async def healthz_while(client: AppClient, work: Awaitable[T]) -> tuple[float, T]:
    """The slowest /healthz answer while `work` runs, and work's response."""
    task = asyncio.ensure_future(work)
    worst = 0.0
    probes = 0
    while not task.done() or probes == 0:
        # The pause is measured too: it is when the request runs, and a stalled loop oversleeps.
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        response = await client.http.get("/healthz")
        worst = max(worst, time.perf_counter() - started - 0.005)
        probes += 1
        assert response.status_code == 200
    return worst, await task


def body(payload: dict[str, Any]) -> bytes:
    # Encoded up front: encoding it inside the request would stall the test's own loop.
    return msgspec.json.encode(payload)


async def test_a_huge_prompt_is_refused_at_once_and_does_not_stall(local_client: AppClient) -> None:
    content = "word " * 1_500_000  # 7.5 MB, under the 8 MiB body cap
    payload = body({"model": "local-chat", "messages": [{"role": "user", "content": content}]})
    started = time.perf_counter()
    worst, response = await healthz_while(
        local_client, local_client.http.post("/v1/chat/completions", content=payload, headers=JSON)
    )
    elapsed = time.perf_counter() - started
    assert worst < HEALTHZ_BOUND, f"/healthz took {worst * 1000:.0f} ms"
    error = assert_openai_error(response, 400, param="messages", code="context_length_exceeded")
    assert "at least" in error["message"]
    assert elapsed < 3, f"refused after {elapsed:.1f} s"  # it used to take 12 s


async def test_a_prompt_that_must_be_tokenized_does_not_stall(local_client: AppClient) -> None:
    """Just under the size bound the prompt is tokenized to find out: in a thread, not on the loop."""
    model = local_client.runtime.models["local-chat"]
    chars = model.config.context_window * model._max_token_bytes - 1000
    # Random letters: about a second of tokenizing here (ordinary words take a fifth of that).
    content = "".join(random.Random(7).choices(string.ascii_letters, k=chars))
    payloads = [
        body({"model": "local-chat", "messages": [{"role": "user", "content": content}], "stream": stream})
        for stream in (False, True)
    ]

    async def send_all() -> list[httpx.Response]:
        posts = (local_client.http.post("/v1/chat/completions", content=p, headers=JSON) for p in payloads)
        return list(await asyncio.gather(*posts))

    started = time.perf_counter()
    worst, responses = await healthz_while(local_client, send_all())
    elapsed = time.perf_counter() - started
    assert worst < HEALTHZ_BOUND, f"/healthz took {worst * 1000:.0f} ms"
    # Relative too: a loop that tokenized would answer /healthz only once the tokenizing is done.
    assert worst < elapsed / 4, f"/healthz took {worst * 1000:.0f} ms of {elapsed * 1000:.0f} ms"
    for response in responses:
        error = assert_openai_error(response, 400, param="messages", code="context_length_exceeded")
        assert "at least" not in error["message"]  # counted exactly


async def test_a_huge_embedding_input_does_not_stall(local_client: AppClient) -> None:
    payload = body({"model": "local-embed", "input": "word " * 1_400_000})  # 7 MB
    worst, response = await healthz_while(
        local_client, local_client.http.post("/v1/embeddings", content=payload, headers=JSON)
    )
    assert_openai_error(response, 400, param="input", code="context_length_exceeded")
    assert worst < HEALTHZ_BOUND, f"/healthz took {worst * 1000:.0f} ms"
