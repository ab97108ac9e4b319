"""0006_usage_refused: past rows of calls refused for budget (recorded at an estimated cost) cost $0."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.store import MIGRATIONS, connect, migrate
from tests.store.test_database_contract import _drop_schema as drop_schema
from tests.store.test_database_contract import _pg_url as pg_url

OLD_ROW = (
    "INSERT INTO usage (id, ts, endpoint, key_id, team, user_name, model, served_model, status, prompt_tokens, "
    "completion_tokens, cost_usd, latency_ms, ttft_ms, stream, cache_hit, error_kind) "
    "VALUES (?, 1.0, 'chat.completions', 'k', 't', NULL, 'm', 'm', ?, 100, ?, 0.5, 1.0, NULL, 0, 0, ?)"
)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_past_budget_refusals_are_set_to_zero(tmp_path: Path, backend: str) -> None:
    schema = None
    if backend == "postgresql":
        url, schema = await pg_url()
    else:
        url = f"sqlite:///{tmp_path / 'm.db'}"
    db = await connect(url)
    try:
        names = [m.name for m in MIGRATIONS]
        await migrate(db, MIGRATIONS[: names.index("0006_usage_refused")])
        await db.execute(OLD_ROW, ("served", 200, 7, None))
        await db.execute(OLD_ROW, ("refused", 429, 0, "budget_exceeded"))
        await db.execute(OLD_ROW, ("upstream-429", 429, 0, "rate_limited"))  # may have gone upstream
        assert "0006_usage_refused" in await migrate(db)
        rows = {
            r["id"]: (r["refused"], r["cost_usd"], r["prompt_tokens"])
            for r in await db.fetchall("SELECT id, refused, cost_usd, prompt_tokens FROM usage")
        }
        assert rows == {"served": (0, 0.5, 100), "refused": (1, 0, 0), "upstream-429": (0, 0.5, 100)}
    finally:
        await db.close()
        if schema is not None:
            await drop_schema(schema)
