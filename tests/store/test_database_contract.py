"""One contract, every backend: the same tests run on SQLite and on the PostgreSQL of this machine.

PostgreSQL tests use a schema of their own (`?schema=` in the URL), dropped afterwards. They fail,
not skip, when the server is down, unless MESHGATE_SKIP_POSTGRES=1.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from meshgate.errors import ConfigError
from meshgate.store import INSERT_USAGE, MIGRATIONS, BatchWriter, Database, Migration, UsageRecord, connect, migrate
from meshgate.store.postgres import to_dollar_params

PG_BASE = os.environ.get("MESHGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


async def _pg_url() -> tuple[str, str]:
    schema = "t_" + uuid.uuid4().hex[:12]
    if os.environ.get("MESHGATE_SKIP_POSTGRES") == "1":
        pytest.skip("MESHGATE_SKIP_POSTGRES=1")
    try:
        conn = await asyncpg.connect(PG_BASE, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {PG_BASE} is unreachable ({exc}); set MESHGATE_SKIP_POSTGRES=1 to skip")
    await conn.close()
    return f"{PG_BASE}?schema={schema}", schema


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_BASE)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    url, schema = await _pg_url()
    yield url
    await _drop_schema(schema)


@pytest.fixture()
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await connect(db_url)
    yield database
    await database.close()


def record(i: int, **changes: object) -> UsageRecord:
    values: dict[str, object] = dict(
        id=f"req_{i}",
        ts=1_700_000_000.0 + i,
        endpoint="chat.completions",
        key_id="key_1",
        team="t",
        user_name=None,
        model="m",
        served_model="m",
        status=200,
        prompt_tokens=3,
        completion_tokens=4,
        cost_usd=0.0001,
        latency_ms=1.5,
        ttft_ms=None,
        stream=False,
        cache_hit=False,
        error_kind=None,
    )
    values.update(changes)
    return UsageRecord(**values)  # type: ignore[arg-type]


def usage_writer(db: Database, **options: object) -> BatchWriter:
    return BatchWriter(db, INSERT_USAGE, name="usage", **options)  # type: ignore[arg-type]


async def test_round_trip_and_placeholders(db: Database) -> None:
    await db.execute("CREATE TABLE t (k TEXT, v BIGINT, f DOUBLE PRECISION)")
    await db.execute("INSERT INTO t (k, v, f) VALUES (?, ?, ?)", ("a?b", 1, 0.5))
    await db.executemany("INSERT INTO t (k, v, f) VALUES (?, ?, ?)", [("b", 2, 1.5), ("c", 3, 2.5)])
    rows = await db.fetchall("SELECT k, v, f FROM t WHERE k <> 'what?' ORDER BY v")
    assert rows == [{"k": "a?b", "v": 1, "f": 0.5}, {"k": "b", "v": 2, "f": 1.5}, {"k": "c", "v": 3, "f": 2.5}]
    assert await db.fetchone("SELECT v FROM t WHERE k = ?", ("c",)) == {"v": 3}
    assert await db.fetchone("SELECT v FROM t WHERE k = ?", ("zzz",)) is None


async def test_transaction_commits_and_rolls_back(db: Database) -> None:
    await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t (k) VALUES (?)", ("kept",))
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (k) VALUES (?)", ("lost",))
            raise RuntimeError("boom")
    assert await db.fetchall("SELECT k FROM t") == [{"k": "kept"}]


async def test_executemany_is_all_or_nothing(db: Database) -> None:
    await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    with pytest.raises(Exception):  # noqa: B017 - each driver has its own integrity error
        await db.executemany("INSERT INTO t (k) VALUES (?)", [("a",), ("a",)])
    assert await db.fetchall("SELECT k FROM t") == []


async def test_migrate_is_idempotent_and_recorded(db: Database) -> None:
    applied = await migrate(db)
    assert applied[:3] == ["0001_request_log", "0002_teams_and_keys", "0003_usage"]
    assert await migrate(db) == []
    names = [r["name"] for r in await db.fetchall("SELECT name FROM meshgate_migrations")]
    assert names == applied
    extra = Migration("9999_test", ("CREATE TABLE extra (x INTEGER)",))
    assert await migrate(db, [*MIGRATIONS, extra]) == ["9999_test"]


async def test_concurrent_migrations_apply_once(db_url: str) -> None:
    first, second = await connect(db_url), await connect(db_url)
    try:
        results = await asyncio.gather(migrate(first), migrate(second))
        assert sorted(len(r) for r in results) == [0, len(results[0]) + len(results[1])]
        rows = await first.fetchall("SELECT name FROM meshgate_migrations")
        assert len(rows) == len({r["name"] for r in rows})
    finally:
        await first.close()
        await second.close()


async def test_ping(db: Database) -> None:
    assert await db.ping() is True


async def test_usage_writer_batches_and_flushes_at_stop(db: Database) -> None:
    await migrate(db)
    writer = usage_writer(db, batch_size=50, flush_interval=10)
    await writer.start()
    for i in range(120):
        assert writer.submit(record(i, ttft_ms=2.0 if i % 2 else None, stream=bool(i % 3)))
    await writer.stop()
    rows = await db.fetchall("SELECT * FROM usage ORDER BY ts")
    assert len(rows) == 120
    assert rows[1]["ttft_ms"] == 2.0 and rows[0]["ttft_ms"] is None
    assert rows[1]["stream"] == 1 and rows[0]["stream"] == 0
    assert writer.stats.written == 120 and writer.stats.queue_depth == 0


async def test_duplicate_ids_are_ignored(db: Database) -> None:
    await migrate(db)
    writer = usage_writer(db)
    writer.submit(record(1))
    writer.submit(record(1, status=500))
    assert await writer.flush()
    rows = await db.fetchall("SELECT status FROM usage")
    assert rows == [{"status": 200}]


async def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported scheme 'mysql'"):
        await connect("mysql://root:secret@localhost/x")


@pytest.mark.postgres
async def test_unreachable_postgres_names_host_not_password() -> None:
    with pytest.raises(ConfigError) as caught:
        await connect("postgresql://user:hunter2@127.0.0.1:9/db")
    assert "127.0.0.1:9" in str(caught.value) and "hunter2" not in str(caught.value)


def test_dollar_params() -> None:
    assert to_dollar_params("SELECT ? , '?', 'it''s ?', ?") == "SELECT $1 , '?', 'it''s ?', $2"


async def test_two_sqlite_processes_share_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one, two = await connect(url), await connect(url)
    try:
        await migrate(one)
        assert await migrate(two) == []
        await one.execute(INSERT_USAGE, record(5).row())
        assert (await two.fetchone("SELECT model FROM usage")) == {"model": "m"}
    finally:
        await one.close()
        await two.close()


@pytest.mark.postgres
async def test_usage_writer_survives_a_postgres_outage() -> None:
    """Connections killed by the server mid-run: every record still lands once it recovers."""
    url, schema = await _pg_url()
    db = await connect(url)
    try:
        await migrate(db)
        writer = usage_writer(db, batch_size=20, flush_interval=0.05, retry_backoff=(0.05, 0.2))
        await writer.start()
        admin = await asyncpg.connect(PG_BASE)
        for i in range(200):
            writer.submit(record(i))
            if i % 50 == 25:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = ''"
                    " AND query NOT ILIKE '%pg_stat_activity%'"
                )
            await asyncio.sleep(0.005)
        await admin.close()
        await writer.stop(grace=20)
        count = await db.fetchone("SELECT COUNT(*) AS n FROM usage")
        assert count == {"n": 200}
    finally:
        await db.close()
        await _drop_schema(schema)


class FlakyDatabase(Database):
    """Fails its first `failures` writes, then works: the writer must retry, not lose."""

    dialect = "sqlite"

    def __init__(self, failures: int, hang: bool = False) -> None:
        self.failures = failures
        self.hang = hang
        self.rows: list[tuple[object, ...]] = []

    async def execute(self, sql: str, params: object = ()) -> None:  # type: ignore[override]
        return None

    async def executemany(self, sql: str, rows: object) -> None:  # type: ignore[override]
        if self.hang:
            await asyncio.sleep(3600)
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database down")
        self.rows.extend(rows)  # type: ignore[arg-type]

    async def fetchall(self, sql: str, params: object = ()) -> list[dict[str, object]]:  # type: ignore[override]
        return []

    def transaction(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def exclusive(self, lock):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


async def test_writer_retries_with_backoff() -> None:
    db = FlakyDatabase(failures=3)
    writer = usage_writer(db, batch_size=10, flush_interval=0.01, retry_backoff=(0.02, 0.1))
    await writer.start()
    for i in range(25):
        writer.submit(record(i))
    deadline = time.monotonic() + 5
    while len(db.rows) < 25 and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a fake on purpose
        await asyncio.sleep(0.02)
    await writer.stop()
    assert len(db.rows) == 25
    assert writer.stats.failed_batches == 3


async def test_submit_never_blocks_and_drops_when_full() -> None:
    db = FlakyDatabase(failures=0, hang=True)
    writer = usage_writer(db, max_queue=100, batch_size=10, flush_interval=0.01)
    await writer.start()
    started = time.monotonic()
    accepted = sum(writer.submit(record(i)) for i in range(1000))
    assert time.monotonic() - started < 0.5
    assert accepted == 100
    assert writer.stats.dropped == 900
    await writer.stop(grace=0.2)


async def test_usage_report_groups_on_every_backend(db: Database) -> None:
    from meshgate.observe.usage_report import usage_report

    await migrate(db)
    writer = usage_writer(db)
    day = 86400.0
    base = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    writer.submit(record(1, ts=base + 10, team="a", model="m1", cost_usd=0.5, prompt_tokens=10, completion_tokens=1))
    writer.submit(record(2, ts=base + 20, team="a", model="m2", cost_usd=0.25, status=502))
    writer.submit(record(3, ts=base + day, team="b", model="m1", cost_usd=1.0, key_id="key_2"))
    assert await writer.flush()
    by_team = await usage_report(db, "team")
    assert [(r["team"], r["requests"], r["cost_usd"], r["errors"]) for r in by_team] == [
        ("a", 2, 0.75, 1),
        ("b", 1, 1.0, 0),
    ]
    assert by_team[0]["prompt_tokens"] == 13 and by_team[0]["completion_tokens"] == 5
    assert by_team[0]["refused"] == 0  # an upstream's 502 went upstream: an error, not a refusal
    by_day = await usage_report(db, "day")
    assert [(r["day"], r["requests"]) for r in by_day] == [("2023-11-15", 2), ("2023-11-16", 1)]
    assert [r["model"] for r in await usage_report(db, "model")] == ["m1", "m2"]
    assert [r["key"] for r in await usage_report(db, "key")] == ["key_1", "key_2"]
    assert [r["team"] for r in await usage_report(db, "team", since=base + day / 2)] == ["b"]


async def test_concurrent_flushes_write_each_record_once(db: Database) -> None:
    await migrate(db)
    writer = usage_writer(db, batch_size=7, flush_interval=0.001)
    await writer.start()
    for i in range(200):
        writer.submit(record(i))
        if i % 25 == 0:
            await asyncio.gather(writer.flush(), writer.flush())
    await writer.stop()
    count = await db.fetchone("SELECT COUNT(*) AS n FROM usage")
    assert count == {"n": 200} and writer.stats.written == 200
