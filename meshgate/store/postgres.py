"""PostgreSQL backend on an asyncpg connection pool.

Placeholders are rewritten from `?` to `$1..$n` once per statement text (cached). A `schema`
query parameter in the URL (`postgresql://host/db?schema=meshgate`) sets the search path, so that
several installations or test runs can share one database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import asyncpg

from meshgate.errors import ConfigError
from meshgate.store.database import Database, Params, Queries, Row, redact


def lock_id(name: str) -> int:
    """A stable 63-bit advisory-lock number for a lock name."""
    return int.from_bytes(hashlib.sha256(f"meshgate:{name}".encode()).digest()[:8], "big") >> 1


@lru_cache(maxsize=1024)
def to_dollar_params(sql: str) -> str:
    """`?` -> `$n`, leaving `?` inside single-quoted literals alone."""
    out: list[str] = []
    index = 0
    for piece in re.split(r"('(?:[^']|'')*')", sql):
        if piece.startswith("'"):
            out.append(piece)
            continue
        parts = piece.split("?")
        for position, part in enumerate(parts):
            out.append(part)
            if position < len(parts) - 1:
                index += 1
                out.append(f"${index}")
    return "".join(out)


def _split_schema(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = [(k, v) for k, v in query if k != "schema"]
    return parts._replace(query=urlencode(rest)).geturl(), schema


class _On(Queries):
    """Statements on one acquired connection (a transaction's)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._conn.execute(to_dollar_params(sql), *params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        await self._conn.executemany(to_dollar_params(sql), [tuple(r) for r in rows])

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [dict(r) for r in await self._conn.fetch(to_dollar_params(sql), *params)]


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, pool: Any, url: str) -> None:
        self._pool = pool
        self.url = url

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
        dsn, schema = _split_schema(url.replace("postgres://", "postgresql://", 1))
        settings = {"search_path": schema} if schema else None
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, server_settings=settings, timeout=10
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            parts = urlsplit(dsn)
            raise ConfigError(
                f"database_url: cannot connect to PostgreSQL at {parts.hostname or 'localhost'}:{parts.port or 5432}"
                f", database {parts.path.lstrip('/') or '(default)'} ({redact(url)}): {exc}"
            ) from None
        if schema:
            async with pool.acquire() as conn:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        return cls(pool, url)

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._pool.execute(to_dollar_params(sql), *params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [dict(r) for r in await self._pool.fetch(to_dollar_params(sql), *params)]

    @asynccontextmanager
    async def _transaction(self, lock: str | None) -> AsyncIterator[Queries]:
        async with self._pool.acquire() as conn, conn.transaction():
            if lock is not None:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_id(lock))
            yield _On(conn)

    def transaction(self) -> AbstractAsyncContextManager[Queries]:
        return self._transaction(None)

    def exclusive(self, lock: str) -> AbstractAsyncContextManager[Queries]:
        return self._transaction(lock)

    async def ping(self) -> bool:
        try:
            await self._pool.fetchval("SELECT 1", timeout=5)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self._pool.close()
