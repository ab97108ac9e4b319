"""GET /metrics: Prometheus text with latency, time to first token, tokens, cost and rejections."""

from __future__ import annotations

import re

from meshgate.control.records import Limits
from tests.conftest import AppClient
from tests.control.test_auth import HELLO, as_key, mesh, new_key, post  # noqa: F401 - the module fixture
from tests.control.test_ratelimit import fresh_window
from tests.test_api_errors import assert_openai_error


def value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels...}` (labels in any order, others allowed) summed over matches."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
                found = True
    assert found, f"no sample {name}{labels}"
    return total


async def test_metrics_need_a_grant(mesh: AppClient) -> None:  # noqa: F811
    assert_openai_error(await mesh.http.get("/metrics", headers={"authorization": ""}), 401)
    app_key = await new_key(mesh, role="app")
    assert (
        "metrics:*:read"
        in assert_openai_error(await mesh.http.get("/metrics", headers=as_key(app_key)), 403)["message"]
    )
    developer = await new_key(mesh, role="developer")
    assert (await mesh.http.get("/metrics", headers=as_key(developer))).status_code == 200


async def test_calls_show_up_in_metrics(mesh: AppClient) -> None:  # noqa: F811
    await fresh_window()
    key = await new_key(mesh, team="observed", limits=Limits(rpm=2))
    for _ in range(3):
        await post(mesh, key, {**HELLO, "max_tokens": 20})
    async with mesh.http.stream(
        "POST", "/v1/chat/completions", json={**HELLO, "model": "paced", "stream": True}, headers=as_key(key)
    ) as r:
        assert r.status_code == 429
    await post(mesh, mesh.key, {**HELLO, "model": "fail500"})
    await post(mesh, mesh.key, {**HELLO, "model": "nope"})
    text = (await mesh.http.get("/metrics")).text
    assert value(text, "meshgate_requests_total", model="bench", team="observed", status="200") == 2
    assert value(text, "meshgate_rejections_total", reason="rate_limited", team="observed") == 2
    assert value(text, "meshgate_request_latency_seconds_count", model="bench") >= 2
    assert value(text, "meshgate_time_to_first_token_seconds_count", model="bench") >= 2
    assert value(text, "meshgate_tokens_total", model="bench", direction="out") >= 4  # "echo: hi" twice
    assert value(text, "meshgate_cost_usd_total", model="bench", team="observed") > 0
    assert value(text, "meshgate_upstream_errors_total", provider="openai-compatible", kind="upstream_error") >= 1
    assert value(text, "meshgate_http_errors_total", status="404", kind="model_not_found") >= 1
    assert value(text, "meshgate_in_flight_requests") == 0
    assert value(text, "meshgate_usage_queue_depth") >= 0
    assert "meshgate_tokens_per_second_bucket" in text
