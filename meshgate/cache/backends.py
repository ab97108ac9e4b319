"""Where cached answers live: in process (LRU, bounded), SQLite (a file of its own) or Redis.

Every backend keeps, per entry: its id (`<team>:<scope key>:<model>:<request digest>`, names
hashed), the stored answer (bytes), who it belongs to and who stored it (for purges), when it was
created and when it expires, and for the semantic mode the bucket it belongs to (the same id prefix
with the digest of the conversation without its last user turn), the unit vector of that turn and
its guard digest (key.guard_digest).

A lookup is one call: the exact entry and, in semantic mode, the bucket's candidates (for Redis,
one pipelined round trip). A semantic match is then read with `get`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import struct
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from meshgate.cache.key import name_hash

T = TypeVar("T")

#: The most recent questions per bucket a semantic lookup compares against.
MAX_CANDIDATES = 256


@dataclass(slots=True)
class Entry:
    id: str
    value: bytes
    team: str
    creator: str
    model: str
    created: float
    expires: float
    bucket: str | None = None
    vector: bytes | None = None  # float32, unit length
    guard: str = ""

    @property
    def size(self) -> int:
        return len(self.value) + len(self.vector or b"") + 256


@dataclass
class Candidates:
    """A bucket's live questions: entry ids, their guard digests and their vectors (one row each)."""

    ids: list[str] = field(default_factory=list)
    guards: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None

    @classmethod
    def of(cls, rows: list[tuple[str, str, bytes]]) -> Candidates:
        if not rows:
            return cls()
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return cls([r[0] for r in rows], [r[1] for r in rows], matrix)


@dataclass(frozen=True)
class PurgeFilter:
    team: str | None = None
    model: str | None = None
    #: Seconds: only entries created more than this long ago.
    older_than: float | None = None
    key: str | None = None

    def matches(self, team: str, model: str, created: float, creator: str, now: float) -> bool:
        return (
            (self.team is None or team == self.team)
            and (self.model is None or model == self.model)
            and (self.older_than is None or created < now - self.older_than)
            and (self.key is None or creator == self.key)
        )


class Backend(ABC):
    name: str

    @abstractmethod
    async def lookup(self, entry_id: str, bucket: str | None) -> tuple[bytes | None, Candidates]:
        """The live entry `entry_id` (or None) and, when `bucket` is given, its candidates."""

    @abstractmethod
    async def get(self, entry_id: str) -> bytes | None: ...

    @abstractmethod
    async def put(self, entry: Entry) -> None: ...

    def put_later(self, entry: Entry) -> Awaitable[None] | None:
        """Start writing `entry` without waiting for it: what to wait for until it is written, or
        None when nothing new is (written already, or joining a write under way). The cache stores
        every miss this way: a backend that batches or writes in memory costs no task per entry."""
        return self.put(entry)

    @abstractmethod
    async def purge(self, where: PurgeFilter) -> int:
        """Remove the matching entries; how many were removed."""

    async def close(self) -> None:
        return None


class MemoryBackend(Backend):
    """In process: an LRU bounded by entries and bytes. Lost on restart, not shared by workers."""

    name = "memory"

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.buckets: dict[str, dict[str, None]] = {}
        self.bytes = 0

    def _live(self, entry_id: str, now: float) -> Entry | None:
        entry = self.entries.get(entry_id)
        if entry is None:
            return None
        if entry.expires <= now:
            self._remove(entry_id)
            return None
        self.entries.move_to_end(entry_id)
        return entry

    def _remove(self, entry_id: str) -> None:
        entry = self.entries.pop(entry_id, None)
        if entry is None:
            return
        self.bytes -= entry.size
        if entry.bucket is not None:
            members = self.buckets.get(entry.bucket)
            if members is not None:
                members.pop(entry_id, None)
                if not members:
                    del self.buckets[entry.bucket]

    async def lookup(self, entry_id: str, bucket: str | None) -> tuple[bytes | None, Candidates]:
        now = time.time()
        entry = self._live(entry_id, now)
        candidates = Candidates()
        if bucket is not None and entry is None:
            rows = []
            for member in reversed(list(self.buckets.get(bucket, ()))):
                other = self.entries[member]
                if other.expires > now and other.vector is not None:
                    rows.append((member, other.guard, other.vector))
                    if len(rows) >= MAX_CANDIDATES:
                        break
            candidates = Candidates.of(rows)
        return (entry.value if entry is not None else None), candidates

    async def get(self, entry_id: str) -> bytes | None:
        entry = self._live(entry_id, time.time())
        return entry.value if entry is not None else None

    async def put(self, entry: Entry) -> None:
        self._put(entry)

    def put_later(self, entry: Entry) -> None:
        self._put(entry)  # in memory: done at once, nothing to wait for

    def _put(self, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return
        self._remove(entry.id)
        self.entries[entry.id] = entry
        self.bytes += entry.size
        if entry.bucket is not None:
            self.buckets.setdefault(entry.bucket, {})[entry.id] = None
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self.entries)))

    async def purge(self, where: PurgeFilter) -> int:
        now = time.time()
        doomed = [e.id for e in self.entries.values() if where.matches(e.team, e.model, e.created, e.creator, now)]
        for entry_id in doomed:
            self._remove(entry_id)
        return len(doomed)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    creator TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    bucket TEXT,
    guard TEXT NOT NULL DEFAULT '',
    vector BLOB,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_entries_bucket ON cache_entries (bucket, created) WHERE bucket IS NOT NULL;
CREATE INDEX IF NOT EXISTS cache_entries_expires ON cache_entries (expires);
CREATE INDEX IF NOT EXISTS cache_entries_team ON cache_entries (team, model);
"""
SCHEMA_VERSION = 1
#: Expired rows are deleted every this many writes.
SWEEP_EVERY = 500
#: How long a write waits for others to join its transaction.
FLUSH_DELAY = 0.05
#: Most entry ids a process keeps in memory to answer misses without reading the file.
MAX_KNOWN = 1_000_000


class SQLiteBackend(Backend):
    """A SQLite file of its own (`<data dir>/cache.sqlite3`), WAL, created 0600. Reads run on one
    thread and writes on another, each with its own connection: the event loop never touches disk,
    and a lookup does not queue behind a write."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="meshgate-cache-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="meshgate-cache-write")
        self._rconn: sqlite3.Connection | None = None
        self._wconn: sqlite3.Connection | None = None
        self._writes = 0
        self._opened = False
        #: Ids (-> expiry) of the entries this process knows the file holds: an exact lookup of any
        #: other id is a miss without a trip to the reader thread (the miss path costs no I/O).
        #: Loaded when the file is opened; entries written by other processes since are not in it,
        #: so they are missed here (a lost hit, never a wrong one). Past MAX_KNOWN ids, every
        #: lookup asks the file.
        self._known: dict[str, float] | None = None
        #: Entries waiting to be written: one transaction per batch, from one flush task.
        self._pending: list[Entry] = []
        self._flushing: asyncio.Task[None] | None = None

    def _open_writer(self) -> sqlite3.Connection:
        if self._wconn is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: cache schema {version} is newer than this meshgate's")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._wconn = conn
        return self._wconn

    def _open_reader(self) -> sqlite3.Connection:
        if self._rconn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            self._rconn = conn
        return self._rconn

    async def _on(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
        if not self._opened:  # the schema exists before the first read
            await asyncio.get_running_loop().run_in_executor(self._writer, self._open_writer)
            self._known = await asyncio.get_running_loop().run_in_executor(self._writer, self._load_known)
            self._opened = True
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _load_known(self) -> dict[str, float] | None:
        conn = self._open_writer()
        rows = conn.execute(
            "SELECT id, expires FROM cache_entries WHERE expires > ? LIMIT ?", (time.time(), MAX_KNOWN + 1)
        ).fetchall()
        return None if len(rows) > MAX_KNOWN else {row[0]: row[1] for row in rows}

    def _surely_absent(self, entry_id: str, bucket: str | None) -> bool:
        if bucket is not None or not self._opened or self._known is None:
            return False
        expires = self._known.get(entry_id)
        return expires is None or expires <= time.time()

    def _lookup(self, entry_id: str, bucket: str | None, now: float) -> tuple[bytes | None, Candidates]:
        conn = self._open_reader()
        row = conn.execute("SELECT value FROM cache_entries WHERE id = ? AND expires > ?", (entry_id, now)).fetchone()
        if row is not None or bucket is None:
            return (row[0] if row else None), Candidates()
        rows = conn.execute(
            "SELECT id, guard, vector FROM cache_entries WHERE bucket = ? AND expires > ? AND vector IS NOT NULL "
            "ORDER BY created DESC LIMIT ?",
            (bucket, now, MAX_CANDIDATES),
        ).fetchall()
        return None, Candidates.of(rows)

    async def lookup(self, entry_id: str, bucket: str | None) -> tuple[bytes | None, Candidates]:
        if self._surely_absent(entry_id, bucket):
            return None, Candidates()
        result: tuple[bytes | None, Candidates] = await self._on(
            self._reader, self._lookup, entry_id, bucket, time.time()
        )
        return result

    async def get(self, entry_id: str) -> bytes | None:
        value, _ = await self.lookup(entry_id, None)
        return value

    def _put(self, entries: list[Entry]) -> None:
        conn = self._open_writer()
        with conn:  # one transaction (one WAL commit) for the whole batch
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT OR REPLACE INTO cache_entries (id, team, creator, model, created, expires, bucket, guard, "
                "vector, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.id, e.team, e.creator, e.model, e.created, e.expires, e.bucket, e.guard, e.vector, e.value)
                    for e in entries
                ],
            )
        before = self._writes
        self._writes += len(entries)
        if self._writes // SWEEP_EVERY != before // SWEEP_EVERY:
            conn.execute("DELETE FROM cache_entries WHERE expires <= ?", (time.time(),))

    async def put(self, entry: Entry) -> None:
        """Queued and written with the others that come meanwhile, in one transaction; returns when
        the entry is on disk."""
        self.put_later(entry)
        assert self._flushing is not None
        await asyncio.shield(self._flushing)

    def put_later(self, entry: Entry) -> asyncio.Task[None] | None:
        """Queue `entry` for the next batch; the flush task when this started one (one task per
        batch, not one per entry: the whole miss path then costs a list append here)."""
        self._pending.append(entry)
        if self._known is not None:
            if len(self._known) >= MAX_KNOWN:
                self._known = None
            else:
                self._known[entry.id] = entry.expires
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())
            return self._flushing
        return None

    async def _flush(self) -> None:
        # Let the puts of the next few milliseconds join the batch: under load one transaction
        # then carries dozens of entries instead of one each (answers never wait for this).
        await asyncio.sleep(FLUSH_DELAY)
        while self._pending:
            batch, self._pending = self._pending, []
            await self._on(self._writer, self._put, batch)

    def _purge(self, where: PurgeFilter, now: float) -> int:
        conn = self._open_writer()
        clauses: list[str] = []
        params: list[str | float] = []
        for column, value in (("team", where.team), ("model", where.model), ("creator", where.key)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if where.older_than is not None:
            clauses.append("created < ?")
            params.append(now - where.older_than)
        sql = "DELETE FROM cache_entries" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        removed = conn.execute(sql, params).rowcount
        conn.execute("DELETE FROM cache_entries WHERE expires <= ?", (now,))  # and what expired anyway
        self._known = self._load_known()  # what is left is the file's to say
        return int(removed)

    async def purge(self, where: PurgeFilter) -> int:
        removed: int = await self._on(self._writer, self._purge, where, time.time())
        return removed

    def _close(self, conn: sqlite3.Connection | None) -> None:
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        if self._flushing is not None:
            await self._flushing
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._reader, self._close, self._rconn)
        await loop.run_in_executor(self._writer, self._close, self._wconn)
        self._rconn = self._wconn = None
        self._reader.shutdown(wait=False)
        self._writer.shutdown(wait=False)


_PREFIX = "meshgate:cache:"
_BUCKET_FIELD = struct.Struct("<dd48s")  # created, expires, guard; then the float32 vector


class RedisBackend(Backend):
    """Shared by every replica. An entry is a hash (`v` the answer, `t`/`k`/`m`/`c`/`b` who, when
    and which bucket) expiring with the entry; a bucket is a hash of entry id -> created, expiry,
    guard and vector. A lookup is one pipelined round trip (HGET the entry, HGETALL its bucket)."""

    name = "redis"

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def lookup(self, entry_id: str, bucket: str | None) -> tuple[bytes | None, Candidates]:
        if bucket is None:
            return await self._redis.hget(_PREFIX + "e:" + entry_id, "v"), Candidates()
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(_PREFIX + "e:" + entry_id, "v")
        pipe.hgetall(_PREFIX + "b:" + bucket)
        value, members = await pipe.execute()
        if value is not None:
            return value, Candidates()
        now = time.time()
        rows = []
        for member, packed in members.items():
            created, expires, guard = _BUCKET_FIELD.unpack_from(packed)
            if expires > now:
                rows.append((created, member.decode(), guard.rstrip(b"\0").decode(), packed[_BUCKET_FIELD.size :]))
        rows.sort(reverse=True)
        return None, Candidates.of([r[1:] for r in rows[:MAX_CANDIDATES]])

    async def get(self, entry_id: str) -> bytes | None:
        value: bytes | None = await self._redis.hget(_PREFIX + "e:" + entry_id, "v")
        return value

    async def put(self, e: Entry) -> None:
        key = _PREFIX + "e:" + e.id
        fields = {"v": e.value, "t": e.team, "k": e.creator, "m": e.model, "c": repr(e.created), "b": e.bucket or ""}
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.pexpireat(key, int(e.expires * 1000))
        if e.bucket is not None and e.vector is not None:
            bucket = _PREFIX + "b:" + e.bucket
            pipe.hset(bucket, e.id, _BUCKET_FIELD.pack(e.created, e.expires, e.guard.encode()) + e.vector)
            pipe.pexpireat(bucket, int(e.expires * 1000), nx=True)
            pipe.pexpireat(bucket, int(e.expires * 1000), gt=True)
            pipe.hlen(bucket)
        results = await pipe.execute()
        if e.bucket is not None and e.vector is not None and results[-1] > MAX_CANDIDATES + 64:
            await self._trim(_PREFIX + "b:" + e.bucket)

    async def _trim(self, bucket: str) -> None:
        """Keep a bucket's most recent live questions only."""
        members = await self._redis.hgetall(bucket)
        now = time.time()
        ranked = sorted(((_BUCKET_FIELD.unpack_from(v), k) for k, v in members.items()), reverse=True)
        doomed = [k for i, ((_c, expires, _g), k) in enumerate(ranked) if i >= MAX_CANDIDATES or expires <= now]
        if doomed:
            await self._redis.hdel(bucket, *doomed)

    async def purge(self, where: PurgeFilter) -> int:
        team = name_hash(where.team) if where.team is not None else "*"
        model = name_hash(where.model) if where.model is not None else "*"
        pattern = f"{_PREFIX}e:{team}:*:{model}:*"
        now, removed = time.time(), 0
        batch: list[bytes] = []

        async def flush() -> int:
            pipe = self._redis.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, "t", "m", "c", "k", "b")
            metas = await pipe.execute()
            pipe = self._redis.pipeline(transaction=False)
            count = 0
            for key, (t, m, c, k, b) in zip(batch, metas, strict=True):
                if t is None or not where.matches(t.decode(), m.decode(), float(c), k.decode(), now):
                    continue
                pipe.delete(key)
                if b:
                    pipe.hdel(_PREFIX + "b:" + b.decode(), key[len(_PREFIX) + 2 :])
                count += 1
            await pipe.execute()
            batch.clear()
            return count

        async for key in self._redis.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += await flush()
        if batch:
            removed += await flush()
        return removed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()
