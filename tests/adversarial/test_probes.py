"""The gateway attacked as a hostile key holder would: every probe gets a precise error in OpenAI's
schema, never a 500, never a hang, and the server answers `/healthz` throughout.

Each probe is one HTTP request through a real uvicorn socket (what a socket allows that an
in-process transport hides: oversized headers, raw bytes). New endpoints add their probes here.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from meshgate.control.records import Limits
from tests.conftest import AppClient

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Probe:
    name: str
    path: str
    body: bytes | None = None
    statuses: tuple[int, ...] = (400,)
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    #: The error's `param`, where the probe aims at one field.
    param: str | None = None
    #: Whose error schema the answer is in: the API the probe called.
    schema: str = "openai"


def chat(**fields: object) -> bytes:
    return json.dumps({"model": "bench", "messages": HELLO, **fields}).encode()


PROBES = [
    Probe("malformed JSON", CHAT, b'{"model": "bench", "messages": ['),
    # Bodies stay under the test server's 64 KiB cap (a larger one is a 413 before anything else).
    Probe("deep nesting", CHAT, b'{"model": "bench", "messages": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
    Probe("body over the cap", CHAT, chat(user="u" * 100_000), (413,)),
    Probe("invalid UTF-8", CHAT, b'{"model": "bench", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
    Probe("a JSON array", CHAT, b"[1, 2, 3]"),
    Probe("NaN temperature", CHAT, chat().replace(b"}", b', "temperature": NaN}', 1)),
    Probe("huge max_tokens", CHAT, chat(max_tokens=10**30), param="max_tokens"),
    Probe("huge max_completion_tokens", CHAT, chat(max_completion_tokens=2**63), param="max_completion_tokens"),
    Probe("huge seed", CHAT, chat(seed=2**70), param="seed"),
    Probe("huge n", CHAT, chat(n=10**9), param="n"),
    Probe("logit_bias key not a token id", CHAT, chat(logit_bias={"abc": 1}), param="logit_bias"),
    Probe("logit_bias key not a token id, streamed", CHAT, chat(logit_bias={"-1": 1}, stream=True), param="logit_bias"),
    Probe("60 kB user", CHAT, chat(user="u" * 60_000), param="user"),
    Probe("60 kB model name", CHAT, json.dumps({"model": "m" * 60_000, "messages": HELLO}).encode(), (404,)),
    Probe("unknown field", CHAT, chat(wizardry=True), param="wizardry"),
    Probe("wrong content type", CHAT, chat(), (415,), headers={"content-type": "text/plain"}),
    Probe("empty embedding input", EMBED, json.dumps({"model": "remote-embed", "input": ""}).encode(), param="input"),
    Probe("huge token id", EMBED, json.dumps({"model": "remote-embed", "input": [[2**70]]}).encode()),
    Probe("wrong method", CHAT, None, (405,), method="GET"),
    Probe("path traversal", "/v1/../admin/keys", None, (401, 403, 404), method="GET"),
    Probe("unknown route", "/v1/wizard", chat(), (404,)),
    Probe("2 MB header", "/v1/models", None, (431,), method="GET", headers={"x-junk": "j" * 2_000_000}),
    Probe(
        "messages: malformed JSON", MESSAGES, b'{"model": "bench", "max_tokens": 5, "messages": [', schema="anthropic"
    ),
    Probe(
        "messages: no max_tokens",
        MESSAGES,
        json.dumps({"model": "bench", "messages": HELLO}).encode(),
        schema="anthropic",
    ),
    Probe(
        "messages: huge max_tokens",
        MESSAGES,
        json.dumps({"model": "bench", "max_tokens": 10**30, "messages": HELLO}).encode(),
        schema="anthropic",
    ),
    Probe(
        "messages: unknown model",
        MESSAGES,
        json.dumps({"model": "m" * 60_000, "max_tokens": 5, "messages": HELLO}).encode(),
        (404,),
        schema="anthropic",
    ),
    Probe("responses: malformed JSON", RESPONSES, b'{"model": "bench", "input": ['),
    Probe(
        "responses: huge max_output_tokens",
        RESPONSES,
        json.dumps({"model": "bench", "input": "hi", "max_output_tokens": 2**70}).encode(),
    ),
    Probe(
        "responses: foreign previous_response_id",
        RESPONSES,
        json.dumps({"model": "bench", "input": "hi", "previous_response_id": "resp_x"}).encode(),
        (404,),
    ),
    Probe(
        "completions: two prompts",
        COMPLETIONS,
        json.dumps({"model": "bench", "prompt": ["a", "b"]}).encode(),
        param="prompt",
    ),
]


@pytest.fixture(scope="module")
async def attacker(proxy_url: str, proxy_client: AppClient) -> AsyncIterator[httpx.AsyncClient]:
    """A key with a budget (the budget path must hold too), over a real socket."""
    runtime = proxy_client.runtime
    assert runtime.control is not None and runtime.keys is not None
    created = await runtime.control.create_key(
        "attackers", role="developer", limits=Limits(budget_usd=100.0, budget_period="day")
    )
    await runtime.keys.reload()
    async with httpx.AsyncClient(
        base_url=proxy_url, headers={"authorization": f"Bearer {created.key}"}, timeout=30
    ) as client:
        yield client


def assert_error_schema(response: httpx.Response, schema: str = "openai") -> dict:
    body = response.json()
    if schema == "anthropic":
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert 0 < len(body["error"]["message"]) <= 2000
        return {"param": None, **body["error"]}
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and 0 < len(error["message"]) <= 2000, len(error["message"])
    return error


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
async def test_probe_gets_a_precise_error(attacker: httpx.AsyncClient, probe: Probe) -> None:
    headers = {"content-type": "application/json", **probe.headers}
    started = time.monotonic()
    response = await attacker.request(probe.method, probe.path, content=probe.body, headers=headers)
    assert response.status_code in probe.statuses, (response.status_code, response.text[:500])
    error = assert_error_schema(response, probe.schema)
    if probe.param is not None:
        assert error["param"] == probe.param, error
    assert response.headers["x-request-id"].startswith("req_")
    assert time.monotonic() - started < 20
    health = await attacker.get("/healthz")
    assert health.status_code == 200


async def test_five_thousand_headers_are_refused(attacker: httpx.AsyncClient) -> None:
    headers = [(f"x-h{i}", "v") for i in range(5000)]
    response = await attacker.get("/v1/models", headers=headers)
    assert response.status_code == 431, response.status_code
    assert_error_schema(response)
