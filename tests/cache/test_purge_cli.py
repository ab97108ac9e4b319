"""`meshgate cache purge` and the purge function erasure calls, on the backend the settings select."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgate.cache.backends import Entry, RedisBackend, SQLiteBackend
from meshgate.cache.service import ResponseCache
from meshgate.cli import cli
from tests.cache.test_backends import REDIS_URL, entry, rid


def _yaml(tmp_path: Path, backend: str = "auto") -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(f"cache: {{mode: exact, backend: {backend}}}\n")
    return path


async def _fill(cache: ResponseCache) -> None:
    for item in [
        entry("a:1", team="a", model="m", creator="k1"),
        entry("a:2", team="a", model="n", creator="k2", age=3 * 86400),
        entry("b:1", team="b", model="m", creator="k3"),
    ]:
        cache.store(item)
    await cache.flush()


def purge(tmp_path: Path, *args: str, backend: str = "auto") -> str:
    result = CliRunner().invoke(
        cli, ["cache", "purge", "--config", str(_yaml(tmp_path, backend)), "--data-dir", str(tmp_path / "d"), *args]
    )
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_purge_cli_on_sqlite(tmp_path: Path) -> None:
    async def fill() -> None:
        cache = ResponseCache(SQLiteBackend(tmp_path / "d" / "cache.sqlite3"))
        await _fill(cache)
        await cache.close()

    asyncio.run(fill())
    assert purge(tmp_path, "--team", "a", "--older-than", "2d") == "1 entry removed (sqlite)"
    assert purge(tmp_path, "--model", "m", "--team", "b") == "1 entry removed (sqlite)"
    assert purge(tmp_path) == "1 entry removed (sqlite)"
    assert purge(tmp_path) == "0 entries removed (sqlite)"


def test_purge_cli_on_redis(tmp_path: Path) -> None:
    async def fill() -> bool:
        backend = RedisBackend(REDIS_URL)
        if not await backend.ping():
            return False
        await backend._redis.flushdb()
        cache = ResponseCache(backend)
        await _fill(cache)
        await cache.close()
        return True

    async def left() -> bytes | None:
        backend = RedisBackend(REDIS_URL)
        try:
            return await backend.get(rid("b:1"))
        finally:
            await backend._redis.flushdb()
            await backend.close()

    if not asyncio.run(fill()):
        pytest.skip("no Redis at 127.0.0.1:6379")
    try:
        assert purge(tmp_path, "--team", "a", "--redis-url", REDIS_URL) == "2 entries removed (redis)"
    finally:
        assert asyncio.run(left()) is not None


def test_purge_cli_checks_its_duration(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["cache", "purge", "--config", str(_yaml(tmp_path)), "--older-than", "old"])
    assert result.exit_code == 2 and "--older-than" in result.output


async def test_purge_function_by_key(tmp_path: Path) -> None:
    cache = ResponseCache(SQLiteBackend(tmp_path / "cache.sqlite3"))
    await _fill(cache)
    cache.store(Entry("a:3", b"v", "a", "k1", "m", time.time(), time.time() + 60))
    assert await cache.purge(key="k1") == 2
    assert await cache.purge(older_than="1d") == 1
    assert await cache.purge(team="b", model="m") == 1
    await cache.close()
