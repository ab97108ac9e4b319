"""The cache through the real app: the openai SDK and /v1/messages against a fake upstream."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from meshgate.gateway.runtime import Runtime
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime


def cache_yaml(base_url: str, backend: str = "sqlite") -> str:
    def model(name: str, extra: str = "", price: str = "price: {input: 2.5, output: 10.0}") -> str:
        return f"""
          - name: {name}
            provider: openai-compatible
            model: echo
            base_url: {base_url}
            api_key: ${{TEST_UPSTREAM_KEY}}
            {price}
            {extra}"""

    return textwrap.dedent(
        f"""
        cache:
          mode: exact
          ttl: 1h
          backend: {backend}
        models:"""
        + model("bench")
        + model("nocache", "cache: {mode: off}")
        + model("sampled", "cache: {nondeterministic: true}")
        + model("keyed", "cache: {scope: key}")
        + model("short", "cache: {ttl: 1s}")
        + "\n"
    )


class Tenants:
    def __init__(self, runtime: Runtime, keys: dict[str, str]) -> None:
        self.runtime, self.keys = runtime, keys
        self.apps = {name: AppClient(runtime, key) for name, key in keys.items()}

    def sdk(self, who: str = "a1") -> openai.AsyncOpenAI:
        app = self.apps[who]
        return openai.AsyncOpenAI(
            base_url="http://meshgate.test/v1",
            api_key=self.keys[who],
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://meshgate.test"),
            max_retries=0,
        )

    async def flush(self) -> None:
        step = next(s for s in self.runtime.pipeline.steps if s.name == "cache")
        await step.cache.flush()  # type: ignore[attr-defined]

    async def close(self) -> None:
        for app in self.apps.values():
            await app.http.aclose()


async def start_tenants(runtime: Runtime) -> Tenants:
    await runtime.start()
    assert runtime.control is not None and runtime.keys is not None
    keys = {
        "a1": (await runtime.control.create_key("team-a", role="admin")).key,
        "a2": (await runtime.control.create_key("team-a", role="admin")).key,
        "b1": (await runtime.control.create_key("team-b", role="admin")).key,
    }
    await runtime.keys.reload()
    return Tenants(runtime, keys)


@pytest.fixture(scope="module")
async def tenants(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI) -> AsyncIterator[Tenants]:
    runtime = make_runtime(tmp_path_factory.mktemp("cache"), cache_yaml(fake_upstream.base_url))
    made = await start_tenants(runtime)
    yield made
    await made.close()
    await runtime.stop()


_counter = 0


def question(text: str = "cache me") -> list[dict[str, Any]]:
    """A question no other test asks (the module shares one cache)."""
    global _counter
    _counter += 1
    return [{"role": "user", "content": f"{text} #{_counter}"}]


async def ask(
    tenants: Tenants, messages: list[dict[str, Any]], who: str = "a1", model: str = "bench", **kw: Any
) -> tuple[str, str, dict[str, str]]:
    sdk = tenants.sdk(who)
    kw.setdefault("temperature", 0)
    raw = await sdk.chat.completions.with_raw_response.create(model=model, messages=messages, **kw)  # type: ignore[arg-type]
    completion = raw.parse()
    await tenants.flush()
    return completion.choices[0].message.content or "", raw.headers.get("x-meshgate-cache", ""), dict(raw.headers)


async def test_exact_hit_with_the_sdk(tenants: Tenants, fake_upstream: FakeOpenAI) -> None:
    messages = question()
    before = len(fake_upstream.requests)
    first, kind1, headers1 = await ask(tenants, messages)
    second, kind2, headers2 = await ask(tenants, messages)
    assert (kind1, kind2) == ("miss", "hit")
    assert first == second and first.startswith("echo: cache me")
    assert len(fake_upstream.requests) == before + 1  # the hit never went upstream
    assert headers2["x-meshgate-deployment"] == headers1["x-meshgate-deployment"] == "bench"
    assert headers1["x-request-id"] != headers2["x-request-id"]


async def test_stream_is_replayed_as_a_stream(tenants: Tenants, fake_upstream: FakeOpenAI) -> None:
    messages = question("stream me")
    sdk = tenants.sdk()
    texts, kinds, usages = [], [], []
    before = len(fake_upstream.requests)
    for _ in range(2):
        raw = await sdk.chat.completions.with_raw_response.create(
            model="bench",
            messages=messages,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        kinds.append(raw.headers["x-meshgate-cache"])
        chunks = [chunk async for chunk in raw.parse()]
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        usages.append(chunks[-1].usage)
        assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
        assert len({c.id for c in chunks}) == 1
        await tenants.flush()
    assert kinds == ["miss", "hit"]
    assert texts[0] == texts[1] and texts[0].startswith("echo: stream me")
    assert usages[0] is not None and usages[0] == usages[1]
    assert len(fake_upstream.requests) == before + 1
    # Not asked for, the usage chunk of the replay is left out as for a live stream.
    raw = await sdk.chat.completions.with_raw_response.create(
        model="bench",
        messages=messages,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    assert raw.headers["x-meshgate-cache"] == "hit"
    assert all(c.usage is None for c in [c async for c in raw.parse()])


async def test_a_stream_and_a_completion_are_separate_entries(tenants: Tenants) -> None:
    messages = question()
    await ask(tenants, messages)
    sdk = tenants.sdk()
    raw = await sdk.chat.completions.with_raw_response.create(
        model="bench",
        messages=messages,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    assert raw.headers["x-meshgate-cache"] == "miss"
    _ = [c async for c in raw.parse()]


async def test_anthropic_messages_hit(tenants: Tenants, fake_upstream: FakeOpenAI) -> None:
    http = tenants.apps["a1"].http
    body = {"model": "bench", "max_tokens": 50, "temperature": 0, "messages": question("anthropic")}
    first = await http.post("/v1/messages", json=body)
    await tenants.flush()
    second = await http.post("/v1/messages", json=body)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-meshgate-cache"], second.headers["x-meshgate-cache"]) == ("miss", "hit")
    assert first.json()["content"] == second.json()["content"]
    assert second.json()["usage"] == first.json()["usage"]
    stream = await http.post("/v1/messages", json={**body, "stream": True})
    await tenants.flush()
    replay = await http.post("/v1/messages", json={**body, "stream": True})
    assert (stream.headers["x-meshgate-cache"], replay.headers["x-meshgate-cache"]) == ("miss", "hit")
    assert "event: message_stop" in replay.text and stream.text.count("text_delta") == replay.text.count("text_delta")


async def test_no_team_sees_another_teams_answer(tenants: Tenants) -> None:
    messages = question("secret")
    assert (await ask(tenants, messages, "a1"))[1] == "miss"
    assert (await ask(tenants, messages, "a2"))[1] == "hit"  # same team, other key: shared
    assert (await ask(tenants, messages, "b1"))[1] == "miss"  # another team: never
    assert (await ask(tenants, messages, "b1"))[1] == "hit"


async def test_key_scope_by_config_and_by_request(tenants: Tenants) -> None:
    messages = question("mine")
    assert (await ask(tenants, messages, "a1", "keyed"))[1] == "miss"
    assert (await ask(tenants, messages, "a2", "keyed"))[1] == "miss"  # scope key: not shared in the team
    assert (await ask(tenants, messages, "a1", "keyed"))[1] == "hit"
    narrow = {"x-meshgate-cache-scope": "key"}
    messages = question("mine")
    assert (await ask(tenants, messages, "a1", extra_headers=narrow))[1] == "miss"
    assert (await ask(tenants, messages, "a2", extra_headers=narrow))[1] == "miss"
    assert (await ask(tenants, messages, "a2"))[1] == "miss"  # the key-scoped entry is not the team's
    assert (await ask(tenants, messages, "a1", extra_headers=narrow))[1] == "hit"


async def test_cache_control(tenants: Tenants, fake_upstream: FakeOpenAI) -> None:
    messages = question()
    await ask(tenants, messages)
    before = len(fake_upstream.requests)
    _, kind, _ = await ask(tenants, messages, extra_headers={"cache-control": "no-cache"})
    assert kind == "bypass" and len(fake_upstream.requests) == before + 1  # looked up nothing...
    fresh = question()
    assert (await ask(tenants, fresh, extra_headers={"cache-control": "no-cache"}))[1] == "bypass"
    assert (await ask(tenants, fresh))[1] == "hit"  # ...but stored its answer
    other = question()
    assert (await ask(tenants, other, extra_headers={"cache-control": "no-store"}))[1] == "bypass"
    assert (await ask(tenants, other))[1] == "miss"  # no-store: not stored
    assert (await ask(tenants, other, extra_headers={"cache-control": "no-store"}))[1] == "bypass"  # nor looked up


async def test_nondeterministic_requests_only_when_opted_in(tenants: Tenants) -> None:
    messages = question()
    assert (await ask(tenants, messages, temperature=0.7))[1] == "bypass"
    assert (await ask(tenants, messages, temperature=0.7))[1] == "bypass"
    opt_in = {"x-meshgate-cache-nondeterministic": "true"}
    assert (await ask(tenants, messages, temperature=0.7, extra_headers=opt_in))[1] == "miss"
    assert (await ask(tenants, messages, temperature=0.7, extra_headers=opt_in))[1] == "hit"
    assert (await ask(tenants, messages, temperature=0.7, seed=3))[1] == "miss"  # a seed makes it deterministic
    assert (await ask(tenants, messages, temperature=0.7, seed=3))[1] == "hit"
    assert (await ask(tenants, messages, "a1", "sampled", temperature=0.7))[1] == "miss"  # model opts in
    assert (await ask(tenants, messages, "a1", "sampled", temperature=0.7))[1] == "hit"


async def test_per_model_override_and_ttl(tenants: Tenants) -> None:
    messages = question()
    assert (await ask(tenants, messages, model="nocache"))[2].get("x-meshgate-cache") is None
    assert (await ask(tenants, messages, model="nocache"))[2].get("x-meshgate-cache") is None
    assert (await ask(tenants, messages, model="short"))[1] == "miss"
    assert (await ask(tenants, messages, model="short"))[1] == "hit"
    await asyncio.sleep(1.1)
    assert (await ask(tenants, messages, model="short"))[1] == "miss"  # expired after the model's 1s
    messages = question()
    assert (await ask(tenants, messages, extra_headers={"x-meshgate-cache-ttl": "1s"}))[1] == "miss"
    await asyncio.sleep(1.1)
    assert (await ask(tenants, messages))[1] == "miss"  # the request shortened its entry's life
    response = await tenants.apps["a1"].http.post(
        "/v1/chat/completions",
        json={"model": "bench", "messages": messages, "temperature": 0},
        headers={"x-meshgate-cache-ttl": "soon"},
    )
    assert response.status_code == 400 and "x-meshgate-cache-ttl" in response.text


async def test_usage_rows_and_metrics(tenants: Tenants) -> None:
    runtime = tenants.runtime
    messages = question()
    ids = []
    for _ in range(2):
        _, _, headers = await ask(tenants, messages)
        ids.append(headers["x-request-id"])
    assert runtime.usage is not None and runtime.db is not None
    await runtime.usage.flush()
    miss = await runtime.db.fetchone("SELECT * FROM usage WHERE id = ?", (ids[0],))
    hit = await runtime.db.fetchone("SELECT * FROM usage WHERE id = ?", (ids[1],))
    assert miss is not None and hit is not None
    assert (miss["cache"], hit["cache"]) == ("miss", "hit")
    assert miss["cost_usd"] > 0 and miss["cost_saved_usd"] == 0
    assert hit["cost_usd"] == 0 and hit["prompt_tokens"] == hit["completion_tokens"] == 0
    assert hit["cost_saved_usd"] == pytest.approx(miss["cost_usd"])
    assert hit["cache_hit"]
    sample = runtime.metrics.registry.get_sample_value
    assert (sample("meshgate_cache_results_total", {"model": "bench", "result": "hit"}) or 0) >= 1
    assert (sample("meshgate_cache_results_total", {"model": "bench", "result": "miss"}) or 0) >= 1
    assert (sample("meshgate_cache_saved_usd_total", {"model": "bench"}) or 0) > 0


async def test_a_failed_call_is_not_stored(tmp_path: Path, fake_upstream: FakeOpenAI) -> None:
    yaml_text = cache_yaml(fake_upstream.base_url, "memory").replace("model: echo", "model: fail:500", 1)
    runtime = make_runtime(tmp_path, yaml_text, auth=False)
    await runtime.start()
    try:
        http = AppClient(runtime).http
        body = {"model": "bench", "messages": question(), "temperature": 0}
        for _ in range(2):  # the second is no hit: the failure was not stored
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status_code == 502
    finally:
        await runtime.stop()


async def test_sqlite_entries_survive_a_restart(tmp_path: Path, fake_upstream: FakeOpenAI) -> None:
    messages = question()
    for expected in ("miss", "hit"):
        runtime = make_runtime(tmp_path, cache_yaml(fake_upstream.base_url))
        made = await start_tenants(runtime)
        try:
            assert (await ask(made, messages))[1] == expected
        finally:
            await made.close()
            await runtime.stop()
    assert (tmp_path / "data" / "cache.sqlite3").exists()


async def test_no_cache_step_when_every_model_is_off(tmp_path: Path, fake_upstream: FakeOpenAI) -> None:
    runtime = make_runtime(tmp_path, cache_yaml(fake_upstream.base_url).replace("mode: exact", "mode: off"))
    await runtime.start()
    try:
        assert "cache" not in [s.name for s in runtime.pipeline.steps]
    finally:
        await runtime.stop()


async def test_responses_api_and_legacy_completions_hit(tenants: Tenants) -> None:
    http = tenants.apps["a1"].http
    body = {"model": "bench", "input": question("responses")[0]["content"], "temperature": 0}
    kinds = []
    for _ in range(2):
        response = await http.post("/v1/responses", json=body)
        assert response.status_code == 200, response.text
        kinds.append(response.headers["x-meshgate-cache"])
        await tenants.flush()
    assert kinds == ["miss", "hit"]
    legacy = {"model": "bench", "prompt": question("legacy")[0]["content"], "temperature": 0}
    kinds = []
    for _ in range(2):
        response = await http.post("/v1/completions", json=legacy)
        assert response.status_code == 200, response.text
        kinds.append(response.headers["x-meshgate-cache"])
        await tenants.flush()
    assert kinds == ["miss", "hit"]
