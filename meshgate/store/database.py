"""The database interface every backend implements (`connect()` in the package picks one by URL).

Backends import this module; it imports no backend, so dependencies point one way.

SQL is written once with `?` placeholders and portable types (TEXT, BIGINT, INTEGER, DOUBLE
PRECISION); each backend adapts the placeholders. Rows come back as dicts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

Params = Sequence[Any]
Row = dict[str, Any]


class Queries(ABC):
    """Statements that run on a connection or inside a transaction."""

    @abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> None: ...

    @abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...

    @abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Database(Queries):
    #: "sqlite" or "postgresql"; migrations with per-dialect SQL pick by it.
    dialect: str

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Queries]:
        """`async with db.transaction() as tx:` commits at exit, rolls back on an exception."""

    @abstractmethod
    def exclusive(self, lock: str) -> AbstractAsyncContextManager[Queries]:
        """A transaction holding the named lock: no other process holds it at the same time
        (migrations; appending to the audit chain)."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the database answers; never raises."""

    @abstractmethod
    async def close(self) -> None: ...


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
    return parts._replace(netloc=netloc).geturl()


def holds(dialect: str, column: str) -> str:
    """A clause: `column` holds the text of a `?` parameter made by `holding()`, ignoring case
    (SQLite's LIKE ignores ASCII case; PostgreSQL's needs ILIKE)."""
    operator = "ILIKE" if dialect == "postgresql" else "LIKE"
    return f"{column} {operator} ? ESCAPE '\\'"


def holding(text: str) -> str:
    """The parameter of `holds()`: `text` anywhere, its wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
