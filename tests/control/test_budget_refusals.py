"""A call refused for budget costs $0, is recorded as refused, and does not count after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.control.records import Limits
from meshgate.observe.usage_report import usage_report
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime, upstream_models_yaml
from tests.store.test_database_contract import _drop_schema as drop_schema
from tests.store.test_database_contract import _pg_url as pg_url
from tests.test_api_errors import assert_openai_error

CHAT = "/v1/chat/completions"
# bench costs $2.5 / $10 per million tokens. Its worst case is bounded by the prompt's bytes:
SMALL = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}  # <= $0.000125
BIG = {"model": "bench", "messages": [{"role": "user", "content": "word " * 1600}], "max_tokens": 10}  # $0.02012


async def _start(tmp_path: Path, yaml: str, database: dict[str, str]) -> AppClient:
    return await AppClient.started(make_runtime(tmp_path, yaml, **database))


async def _stop(client: AppClient) -> None:
    await client.http.aclose()
    await client.runtime.stop()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_raised_budget_admits_what_it_can_pay_for_after_a_restart(
    tmp_path: Path, fake_upstream: FakeOpenAI, backend: str
) -> None:
    yaml = upstream_models_yaml(fake_upstream.base_url)
    database: dict[str, str] = {}
    schema = None
    if backend == "postgresql":
        url, schema = await pg_url()
        database["database_url"] = url
    try:
        mesh = await _start(tmp_path, yaml, database)
        control = mesh.runtime.control
        assert control is not None and mesh.runtime.keys is not None
        await control.create_team("frugal", Limits(budget_usd=0.02, budget_period="day"))
        key = (await control.create_key("frugal")).key
        await mesh.runtime.keys.reload()
        auth = {"authorization": f"Bearer {key}"}

        assert (await mesh.http.post(CHAT, json=SMALL, headers=auth)).status_code == 200
        for stream in (False, True, False, True):
            refused = await mesh.http.post(CHAT, json={**BIG, "stream": stream}, headers=auth)
            error = assert_openai_error(refused, 429, code="budget_exceeded")
            assert "of its $0.02 daily budget" in error["message"], error["message"]

        assert mesh.runtime.usage is not None and mesh.runtime.db is not None
        await mesh.runtime.usage.flush()
        rows = await mesh.runtime.db.fetchall(
            "SELECT status, cost_usd, prompt_tokens, completion_tokens, refused FROM usage WHERE team = ? ORDER BY ts",
            ("frugal",),
        )
        assert [r["status"] for r in rows] == [200, 429, 429, 429, 429]
        served, *refusals = rows
        assert served["cost_usd"] > 0 and served["refused"] == 0
        for row in refusals:  # nothing went upstream: $0, no tokens, recorded as refused
            assert (row["cost_usd"], row["prompt_tokens"], row["completion_tokens"], row["refused"]) == (0, 0, 0, 1)
        report = next(r for r in await usage_report(mesh.runtime.db, "team") if r["team"] == "frugal")
        assert report["requests"] == 5 and report["errors"] == 4 and report["refused"] == 4
        assert report["cost_usd"] == round(served["cost_usd"], 6)
        assert report["prompt_tokens"] == served["prompt_tokens"]

        await control.update_team("frugal", {"budget_usd": 0.025})
        await _stop(mesh)

        # A new server on the same database: its budgets start from what was really spent.
        mesh = await _start(tmp_path, yaml, database)
        try:
            admitted = await mesh.http.post(CHAT, json=BIG, headers=auth)
            assert admitted.status_code == 200, admitted.text
        finally:
            await _stop(mesh)
    finally:
        if schema is not None:
            await drop_schema(schema)


async def test_a_huge_max_tokens_with_a_budget_is_a_400(tmp_path: Path, fake_upstream: FakeOpenAI) -> None:
    """It was an OverflowError (500) estimating the worst-case cost."""
    mesh = await _start(tmp_path, upstream_models_yaml(fake_upstream.base_url), {})
    try:
        assert mesh.runtime.control is not None and mesh.runtime.keys is not None
        limits = Limits(budget_usd=1.0, budget_period="month")
        key = (await mesh.runtime.control.create_key("capped", limits=limits)).key
        await mesh.runtime.keys.reload()
        auth = {"authorization": f"Bearer {key}"}
        for field in ("max_tokens", "max_completion_tokens"):
            response = await mesh.http.post(CHAT, json={**SMALL, field: 10**400}, headers=auth)
            assert_openai_error(response, 400, param=field, code="invalid_value")
        assert (await mesh.http.post(CHAT, json=SMALL, headers=auth)).status_code == 200
    finally:
        await _stop(mesh)
