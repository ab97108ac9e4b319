"""SQLite backend: the standard library's sqlite3 on one connection owned by one worker thread.

All statements run on that thread, in order, so the event loop never blocks on disk and the
connection is never shared between threads. WAL lets other processes read and write the same file.

The database holds key hashes, usage and the audit log, so only its owner may read it: the file is
created 0600 (SQLite gives its -wal and -shm files the database file's mode), a directory created
for it 0700, and an existing file that others may read is narrowed to 0600 with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from meshgate.errors import ConfigError
from meshgate.store.database import Database, Params, Queries, Row

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Permission bits for group and others.
_SHARED = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: Path) -> None:
    """Create the directory `path` (and missing parents) for its owner only (0700).

    A directory that already exists keeps its mode, since it may be one others need (`--data-dir .`);
    if group or others may enter it, a warning says so and how to narrow it.
    """
    try:
        path.mkdir(mode=0o700, parents=True)
        return
    except FileExistsError:
        pass
    if os.name != "posix" or not path.is_dir():
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _SHARED:
        log.warning(
            "data directory %s is %04o: other local users may read what meshgate keeps there; "
            "narrow it with `chmod 700 %s`",
            path,
            mode,
            path,
        )


def _private_file(path: Path) -> None:
    """Create the database file 0600 if it is missing; narrow it (and its -wal and -shm files) to
    0600 if others may read them."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    if os.name != "posix":
        return
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & _SHARED:
                file.chmod(mode & ~_SHARED)
                log.warning("%s was %04o, readable by other local users; now %04o", file, mode, mode & ~_SHARED)
        except FileNotFoundError:
            continue
        except PermissionError:
            log.warning("%s is readable by other local users and not ours to narrow (chmod 600 %s)", file, file)


def _path_from_url(url: str) -> Path:
    """sqlite:///relative.db -> relative.db; sqlite:////abs/path.db -> /abs/path.db (SQLAlchemy's form)."""
    parts = urlsplit(url)
    path = parts.path[1:]
    if parts.netloc or not path:
        raise ConfigError(f"database_url: cannot read a file path from {url!r}; use sqlite:///path/to/file.db")
    return Path(path).expanduser()


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    if cursor.description is None:
        return []
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class _Statements(Queries):
    """Runs statements on the connection's thread; used for the database and its transactions."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._db._run(lambda conn: conn.execute(sql, tuple(params)))

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        await self._db._run(lambda conn: conn.executemany(sql, [tuple(r) for r in rows]))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._db._run(lambda conn: _rows(conn.execute(sql, tuple(params))))


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self._conn = conn
        self._executor = executor
        # One transaction at a time on the single connection; plain statements wait for it too.
        self._tx_lock = asyncio.Lock()
        self._statements = _Statements(self)

    @classmethod
    async def open(cls, url: str) -> SQLiteDatabase:
        path = _path_from_url(url)
        executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite")

        def connect() -> sqlite3.Connection:
            if not path.parent.is_dir():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if str(path) != ":memory:":
                _private_file(path)
            # isolation_level=None: autocommit; transactions are explicit BEGIN ... COMMIT.
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            # Erasure (meshgate erase) must leave no copy: deleted rows are zeroed, not left in free pages.
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn

        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, connect)
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise ConfigError(f"database_url: cannot open SQLite database {path}: {exc}") from None
        return cls(path, conn, executor)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, work, self._conn)

    async def execute(self, sql: str, params: Params = ()) -> None:
        async with self._tx_lock:
            await self._statements.execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._tx_lock:
            return await self._statements.fetchall(sql, params)

    @asynccontextmanager
    async def _transaction(self, begin: str) -> AsyncIterator[Queries]:
        async with self._tx_lock:
            await self._run(lambda conn: conn.execute(begin))
            try:
                yield self._statements
            except BaseException:
                await self._run(lambda conn: conn.execute("ROLLBACK"))
                raise
            await self._run(lambda conn: conn.execute("COMMIT"))

    def transaction(self) -> AbstractAsyncContextManager[Queries]:
        return self._transaction("BEGIN")

    def exclusive(self, lock: str) -> AbstractAsyncContextManager[Queries]:
        # BEGIN IMMEDIATE takes SQLite's one write lock at once (whatever the name): a second
        # process waits for it (busy_timeout).
        return self._transaction("BEGIN IMMEDIATE")

    async def ping(self) -> bool:
        try:
            await self.fetchall("SELECT 1")
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())
        self._executor.shutdown(wait=True)
