# ruff: noqa: E501
"""Routes over deployments, through the real app, against real HTTP upstreams on loopback."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello there"}]
DEAD = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: connect errors at once


def route_yaml(base: str) -> str:
    return f"""
    models:
      - name: split
        deployments:
          - {{name: split-a, provider: openai-compatible, model: echo, base_url: "{base}", weight: 80}}
          - {{name: split-b, provider: openai-compatible, model: echo, base_url: "{base}", weight: 20}}
      - name: ordered
        routing: ordered
        deployments:
          - {{name: ordered-dead, provider: openai-compatible, model: echo, base_url: "{DEAD}", connect_timeout: 1}}
          - {{name: ordered-live, provider: openai-compatible, model: echo, base_url: "{base}"}}
      - name: lonely
        provider: openai-compatible
        model: echo
        base_url: "{DEAD}"
        connect_timeout: 1
        fallbacks: [backup]
      - name: backup
        provider: openai-compatible
        model: echo
        base_url: "{base}"
        price: {{input: 1.0, output: 2.0}}
      - name: flaky
        routing: ordered
        breaker: {{failures: 2, cooldown: 30s}}
        deployments:
          - {{name: flaky-500, provider: openai-compatible, model: "fail:500", base_url: "{base}"}}
          - {{name: flaky-ok, provider: openai-compatible, model: echo, base_url: "{base}"}}
      - name: refuses
        routing: ordered
        deployments:
          - {{name: refuses-400, provider: openai-compatible, model: "fail:400", base_url: "{base}"}}
          - {{name: refuses-ok, provider: openai-compatible, model: echo, base_url: "{base}"}}
      - name: limited
        routing: ordered
        deployments:
          - {{name: limited-429, provider: openai-compatible, model: "fail:429", base_url: "{base}"}}
          - {{name: limited-ok, provider: openai-compatible, model: echo, base_url: "{base}"}}
      - name: cutting
        routing: ordered
        deployments:
          - {{name: cutting-cut, provider: openai-compatible, model: "cut:2", base_url: "{base}"}}
          - {{name: cutting-ok, provider: openai-compatible, model: echo, base_url: "{base}"}}
      - name: classified
        routing: ordered
        deployments:
          - {{name: classified-cloud, provider: openai-compatible, model: echo, base_url: "{base}", hosting: cloud}}
          - {{name: classified-private, provider: openai-compatible, model: echo, base_url: "{base}", hosting: private}}
          - {{name: classified-local, provider: openai-compatible, model: echo, base_url: "{base}", hosting: local}}
      - name: cloudonly
        provider: openai-compatible
        model: echo
        base_url: "{base}"
      - name: sticky
        sticky: user
        deployments:
          - {{name: sticky-a, provider: openai-compatible, model: echo, base_url: "{base}", weight: 1}}
          - {{name: sticky-b, provider: openai-compatible, model: echo, base_url: "{base}", weight: 1}}
      - name: cheap
        routing: least-cost
        deployments:
          - {{name: cheap-dear, provider: openai-compatible, model: echo, base_url: "{base}", price: {{input: 5, output: 15}}}}
          - {{name: cheap-cheap, provider: openai-compatible, model: echo, base_url: "{base}", price: {{input: 1, output: 2}}}}
      - name: embed-route
        routing: ordered
        deployments:
          - {{name: embed-dead, provider: openai-compatible, kind: embedding, model: echo, base_url: "{DEAD}", connect_timeout: 1, capabilities: {{embedding_dimensions: 8}}}}
          - {{name: embed-live, provider: openai-compatible, kind: embedding, model: echo, base_url: "{base}", capabilities: {{embedding_dimensions: 8}}}}
      - name: fast
        routing: least-latency
        deployments:
          - {{name: fast-slow, provider: openai-compatible, model: "slow:0.3", base_url: "{base}"}}
          - {{name: fast-quick, provider: openai-compatible, model: echo, base_url: "{base}"}}
    """


@pytest.fixture(scope="module")
def upstream() -> AsyncIterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> AsyncIterator[AppClient]:
    runtime = make_runtime(tmp_path_factory.mktemp("routes"), route_yaml(upstream.base_url))
    client = await AppClient.started(runtime)
    yield client
    await client.http.aclose()
    await runtime.stop()


async def chat(client: AppClient, model: str, **extra: object) -> tuple[int, dict, dict[str, str]]:
    headers = extra.pop("headers", None) or {}
    response = await client.http.post(CHAT, json={"model": model, "messages": HELLO, **extra}, headers=headers)
    return response.status_code, response.json(), dict(response.headers)


async def usage_row(client: AppClient, request_id: str) -> dict:
    runtime = client.runtime
    assert runtime.usage is not None and runtime.db is not None
    await runtime.usage.flush()
    row = await runtime.db.fetchone("SELECT * FROM usage WHERE id = ?", (request_id,))
    assert row is not None
    return row


async def test_weighted_split_follows_the_weights(client: AppClient) -> None:
    served: Counter[str] = Counter()

    async def one() -> None:
        status, body, headers = await chat(client, "split")
        assert status == 200, body
        assert body["model"] == "split"
        served[headers["x-meshgate-deployment"]] += 1

    for _ in range(20):
        await asyncio.gather(*(one() for _ in range(50)))
    assert sum(served.values()) == 1000
    assert 0.75 <= served["split-a"] / 1000 <= 0.85, served


async def test_ordered_route_skips_a_dead_first_deployment(client: AppClient) -> None:
    for _ in range(5):
        status, body, headers = await chat(client, "ordered")
        assert status == 200, body
        assert headers["x-meshgate-deployment"] == "ordered-live"
    row = await usage_row(client, headers["x-request-id"])
    assert row["deployment"] == "ordered-live"


async def test_failover_is_recorded_with_its_reason(tmp_path: Path, upstream: FakeOpenAI) -> None:
    runtime = make_runtime(tmp_path, route_yaml(upstream.base_url))
    client = await AppClient.started(runtime)
    try:
        status, body, headers = await chat(client, "ordered")
        assert status == 200, body
        row = await usage_row(client, headers["x-request-id"])
        assert row["deployment"] == "ordered-live" and row["attempts"] == 2
        assert json.loads(row["failovers"]) == [{"deployment": "ordered-dead", "reason": "unreachable"}]
        metrics = (await client.http.get("/metrics")).text
        assert 'meshgate_failovers_total{deployment="ordered-dead",model="ordered",reason="unreachable"} 1.0' in metrics
    finally:
        await client.http.aclose()
        await runtime.stop()


async def test_a_route_whose_only_deployment_is_down_answers_from_its_fallback(client: AppClient) -> None:
    for _ in range(5):
        status, body, headers = await chat(client, "lonely")
        assert status == 200, body
        assert body["model"] == "lonely"
        assert headers["x-meshgate-deployment"] == "backup"
    row = await usage_row(client, headers["x-request-id"])
    # Priced as the deployment that served it: 5 prompt and 3 completion tokens at 1.0 / 2.0 per M.
    assert row["cost_usd"] == pytest.approx((5 * 1.0 + 3 * 2.0) / 1_000_000)


async def test_an_open_circuit_is_not_tried(client: AppClient, upstream: FakeOpenAI) -> None:
    def tried() -> int:
        return sum(1 for r in upstream.requests if r.body.get("model") == "fail:500")

    before = tried()
    for _ in range(6):
        status, body, headers = await chat(client, "flaky")
        assert status == 200, body
        assert headers["x-meshgate-deployment"] == "flaky-ok"
    assert tried() - before == 2  # two failures open it; the next four calls go straight on
    described = (await client.http.get("/v1/models/flaky")).json()["meshgate"]
    assert {d["name"]: d["circuit"] for d in described["deployments"]} == {"flaky-500": "open", "flaky-ok": "closed"}


async def test_a_bad_request_does_not_fail_over(client: AppClient, upstream: FakeOpenAI) -> None:
    before = len(upstream.requests)
    status, body, _ = await chat(client, "refuses")
    assert status == 400, body
    assert [r.body["model"] for r in upstream.requests[before:]] == ["fail:400"]


async def test_rate_limited_deployment_hands_over(client: AppClient) -> None:
    status, body, headers = await chat(client, "limited")
    assert status == 200, body
    assert headers["x-meshgate-deployment"] == "limited-ok"


async def test_stream_fails_over_before_the_first_byte(client: AppClient) -> None:
    async with client.http.stream(
        "POST", CHAT, json={"model": "limited", "messages": HELLO, "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-meshgate-deployment"] == "limited-ok"
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in lines[:-1]
        if json.loads(line[6:])["choices"]
    )
    assert text == "echo: hello there"


async def test_a_stream_cut_after_the_first_byte_is_never_switched(client: AppClient, upstream: FakeOpenAI) -> None:
    before = len(upstream.requests)
    async with client.http.stream(
        "POST", CHAT, json={"model": "cutting", "messages": HELLO, "stream": True}
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in lines
    assert json.loads(lines[-1])["error"]["code"] == "stream_cut"
    assert [r.body["model"] for r in upstream.requests[before:]] == ["cut:2"]  # never the second one
    row = await usage_row(client, request_id)
    assert row["error_kind"] == "stream_cut" and row["deployment"] == "cutting-cut"
    assert row["completion_tokens"] >= 2  # charged for what was delivered


@pytest.mark.parametrize(
    ("data_class", "served"),
    [("public", "classified-cloud"), ("confidential", "classified-private"), ("restricted", "classified-local")],
)
async def test_data_class_keeps_calls_on_allowed_deployments(client: AppClient, data_class: str, served: str) -> None:
    for _ in range(3):
        status, body, headers = await chat(client, "classified", headers={"x-meshgate-data-class": data_class})
        assert status == 200, body
        assert headers["x-meshgate-deployment"] == served


async def test_restricted_call_without_a_local_deployment_is_refused(client: AppClient) -> None:
    status, body, _ = await chat(client, "cloudonly", headers={"x-meshgate-data-class": "restricted"})
    assert status == 403
    assert body["error"]["code"] == "data_class_forbidden"
    assert "restricted" in body["error"]["message"] and "local" in body["error"]["message"]


async def test_a_header_cannot_lower_the_keys_class(client: AppClient) -> None:
    runtime = client.runtime
    assert runtime.control is not None and runtime.keys is not None
    key = (await runtime.control.create_key("secretive", data_class="restricted")).key
    await runtime.keys.reload()
    response = await client.http.post(
        CHAT,
        json={"model": "classified", "messages": HELLO},
        headers={"authorization": f"Bearer {key}", "x-meshgate-data-class": "public"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-meshgate-deployment"] == "classified-local"
    refused = await client.http.post(
        CHAT, json={"model": "cloudonly", "messages": HELLO}, headers={"authorization": f"Bearer {key}"}
    )
    assert refused.status_code == 403


async def test_an_unknown_data_class_is_a_400(client: AppClient) -> None:
    status, body, _ = await chat(client, "classified", headers={"x-meshgate-data-class": "secret"})
    assert status == 400
    assert body["error"]["param"] == "x-meshgate-data-class"


async def test_sticky_users_keep_their_deployment(client: AppClient) -> None:
    seen: dict[str, set[str]] = {}
    for _ in range(4):
        for user in range(40):
            status, body, headers = await chat(client, "sticky", user=f"user-{user}")
            assert status == 200, body
            seen.setdefault(f"user-{user}", set()).add(headers["x-meshgate-deployment"])
    assert all(len(deployments) == 1 for deployments in seen.values())
    share = Counter(next(iter(d)) for d in seen.values())
    assert 10 <= share["sticky-a"] <= 30, share  # both deployments take users


async def test_least_cost_prefers_the_cheaper_deployment(client: AppClient) -> None:
    for _ in range(3):
        _, _, headers = await chat(client, "cheap")
        assert headers["x-meshgate-deployment"] == "cheap-cheap"


async def test_least_latency_learns_the_faster_deployment(client: AppClient) -> None:
    served = [(await chat(client, "fast"))[2]["x-meshgate-deployment"] for _ in range(6)]
    # Each is measured once (unmeasured ones go first), then the quick one wins.
    assert set(served[:2]) == {"fast-slow", "fast-quick"}
    assert served[2:] == ["fast-quick"] * 4


async def test_embedding_routes_fail_over_too(client: AppClient) -> None:
    response = await client.http.post("/v1/embeddings", json={"model": "embed-route", "input": ["a b", "c"]})
    assert response.status_code == 200, response.text
    assert response.headers["x-meshgate-deployment"] == "embed-live"
    body = response.json()
    assert body["model"] == "embed-route" and len(body["data"]) == 2


async def test_flat_models_name_themselves_as_deployment(client: AppClient) -> None:
    _, _, headers = await chat(client, "backup")
    assert headers["x-meshgate-deployment"] == "backup"


async def test_anthropic_messages_through_a_route_with_failover(client: AppClient) -> None:
    response = await client.http.post("/v1/messages", json={"model": "ordered", "max_tokens": 50, "messages": HELLO})
    assert response.status_code == 200, response.text
    assert response.headers["x-meshgate-deployment"] == "ordered-live"
    assert response.json()["content"][0]["text"] == "echo: hello there"


async def test_every_deployment_down_is_one_clear_error(tmp_path: Path) -> None:
    runtime = make_runtime(
        tmp_path,
        f"""
        models:
          - name: down
            routing: ordered
            deployments:
              - {{name: down-1, provider: openai-compatible, model: echo, base_url: "{DEAD}", connect_timeout: 1}}
              - {{name: down-2, provider: openai-compatible, model: echo, base_url: "{DEAD}", connect_timeout: 1}}
        """,
    )
    client = await AppClient.started(runtime)
    try:
        status, body, _ = await chat(client, "down")
        assert status == 502
        assert body["error"]["code"] == "all_deployments_failed"
        assert "down-1" in body["error"]["message"] and "down-2" in body["error"]["message"]
        for _ in range(3):  # 3 failures each open both circuits
            await chat(client, "down")
        status, body, headers = await chat(client, "down")
        assert status == 503 and body["error"]["code"] == "no_deployment_available"
        assert int(headers["retry-after"]) >= 1
    finally:
        await client.http.aclose()
        await runtime.stop()
