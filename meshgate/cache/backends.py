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
import functools
import logging
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

log = logging.getLogger("meshgate.cache")

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
    #: Erasure (`meshgate erase`): only entries whose stored answer holds one of these byte strings
    #: (a data subject, the id of a knowledge-bank document the answer was built from).
    containing: tuple[bytes, ...] | None = None

    def matches(self, team: str, model: str, created: float, creator: str, now: float) -> bool:
        return (
            (self.team is None or team == self.team)
            and (self.model is None or model == self.model)
            and (self.older_than is None or created < now - self.older_than)
            and (self.key is None or creator == self.key)
        )

    def holds(self, value: bytes) -> bool:
        return self.containing is None or any(needle in value for needle in self.containing)


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

    def candidate_rows(self, bucket: str, now: float) -> list[tuple[str, str, bytes]]:
        """The bucket's live questions, newest first: (entry id, guard, vector)."""
        rows = []
        for member in reversed(list(self.buckets.get(bucket, ()))):
            other = self.entries[member]
            if other.expires > now and other.vector is not None:
                rows.append((member, other.guard, other.vector))
                if len(rows) >= MAX_CANDIDATES:
                    break
        return rows

    async def lookup(self, entry_id: str, bucket: str | None) -> tuple[bytes | None, Candidates]:
        now = time.time()
        entry = self._live(entry_id, now)
        candidates = Candidates()
        if bucket is not None and entry is None:
            candidates = Candidates.of(self.candidate_rows(bucket, now))
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

    def take(self, entry_id: str, now: float) -> Entry | None:
        """Remove and return the live entry `entry_id` (None when absent or expired)."""
        entry = self._live(entry_id, now)
        if entry is not None:
            self._remove(entry_id)
        return entry

    def clear(self) -> None:
        self.entries.clear()
        self.buckets.clear()
        self.bytes = 0

    def purge_now(self, where: PurgeFilter) -> int:
        now = time.time()
        doomed = [
            e.id
            for e in self.entries.values()
            if where.matches(e.team, e.model, e.created, e.creator, now) and where.holds(e.value)
        ]
        for entry_id in doomed:
            self._remove(entry_id)
        return len(doomed)

    async def purge(self, where: PurgeFilter) -> int:
        return self.purge_now(where)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_rows (
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
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
CREATE INDEX IF NOT EXISTS cache_rows_bucket ON cache_rows (bucket, created) WHERE bucket IS NOT NULL;
CREATE INDEX IF NOT EXISTS cache_rows_expires ON cache_rows (expires);
CREATE TABLE IF NOT EXISTS cache_purges (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL);
"""
#: Version 1 kept entries in `cache_entries`, keyed by their id: a random key, so every new entry
#: landed on a random page of that index (one 4 KB page written per entry). Its live rows move over.
_MIGRATE_FROM_1 = """
INSERT INTO cache_rows (id, team, creator, model, created, expires, bucket, guard, vector, value)
    SELECT id, team, creator, model, created, expires, bucket, guard, vector, value FROM cache_entries
    WHERE expires > ? ORDER BY created;
DROP TABLE cache_entries;
"""
SCHEMA_VERSION = 2
_COLUMNS = "rid, id, team, creator, model, created, expires, bucket, guard, vector, value"
#: Rows per INSERT statement: the largest power of two not over what is left (at most MAX_CHUNK).
MAX_CHUNK = 128
_CHUNKS = [0] + [1 << (n.bit_length() - 1) for n in range(1, MAX_CHUNK + 1)]


@functools.cache
def _insert(rows: int) -> str:
    return f"INSERT INTO cache_rows ({_COLUMNS}) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)


#: Expired rows are deleted (and the oldest past MAX_ENTRIES) every this many writes...
SWEEP_EVERY = 500
#: ... at most this many per sweep (their ids come back to the event loop: bounded work there).
SWEEP_LIMIT = 5_000
#: How long a write waits for others to join its transaction.
FLUSH_DELAY = 0.05
#: Most entries the file keeps: past it the oldest written are deleted first (one range of rows at
#: the start of the table). Bounds the file and each process's index (about 100 bytes an entry).
MAX_ENTRIES = 1_000_000


#: How often a process looks for purges another process made in the file (`meshgate erase`, `meshgate
#: cache purge`): the longest an entry that lives only in this process's memory can outlive them.
PURGE_CHECK_EVERY = 0.5

#: `persist` values: "on-hit" writes an entry to the file when it first serves a hit (and at a
#: clean shutdown); "always" writes every entry (within FLUSH_DELAY of its answer).
PERSIST_MODES = ("on-hit", "always")


@dataclass(slots=True)
class _Written:
    """What a batch's write tells the event loop: the batch's first row id, and the rows a sweep
    or an eviction deleted (rid, id). `purged`: the batch was not written because another process
    purged the file since this one last looked (the purge's sequence number)."""

    first: int
    removed: list[tuple[int, str]]
    purged: int = 0


class SQLiteBackend(Backend):
    """A SQLite file of its own (`<data dir>/cache.sqlite3`), WAL, created 0600. Reads run on one
    thread and writes on another, each with its own connection: the event loop never touches disk,
    and a lookup does not queue behind a write.

    The table is append-only on the write path: a row's key is a number one higher than the last
    (`rid`), so a batch of new entries fills the last pages of the table and of the expiry index
    and nothing else; there is no index on the entry id. Instead each process keeps an index in
    memory (hash of the id -> rid), loaded when the file is opened and updated as it writes. It is
    only a hint: every read checks the row's id and expiry in the file, so a stale hint is a miss
    and never a wrong answer. An exact lookup of an id the index does not know is a miss without
    any I/O (the whole miss path is a dict lookup and a list append on the event loop). Entries
    written by other processes sharing the file after this one opened it are not in its index:
    missed here (a lost hit, never a wrong one) until a semantic lookup meets them.

    What reaches the file (`persist`): by default ("on-hit") a new entry first lives in a bounded
    in-process tier (`_fresh`, an LRU of `memory_entries` / `memory_bytes`) and is written when it
    serves its first hit, or at a clean shutdown; an entry evicted from that tier before any hit
    is dropped. Most LLM requests are never repeated, and writing those "one-hit wonders" was the
    whole cost of the miss path (CDNs admit to disk on the second request for the same reason); a
    crash loses only entries that never served a hit. "always" writes every entry.

    A written entry is durable once its batch is: within FLUSH_DELAY (50 ms) plus one write. Until
    then it is answered from memory (`_pending`).

    Purges from other processes (the CLI's `cache purge` and `erase`) are logged in the file
    (`cache_purges`); a process that sees a new one within PURGE_CHECK_EVERY drops every entry it
    holds only in memory (it cannot know which of them the purge meant), and a batch never lands
    after a purge it did not see (checked inside the write's transaction)."""

    name = "sqlite"

    def __init__(
        self,
        path: Path,
        max_entries: int = MAX_ENTRIES,
        persist: str = "on-hit",
        memory_entries: int = 10_000,
        memory_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if persist not in PERSIST_MODES:
            raise ValueError(f"persist must be one of {', '.join(PERSIST_MODES)}, not {persist!r}")
        self.path = path
        self.max_entries = max_entries
        self.persist = persist
        #: Entries not written yet that wait for a hit ("on-hit"): bounded, dropped when evicted.
        self._fresh = MemoryBackend(memory_entries, memory_bytes)
        #: The last purge of the file this process knows of (`cache_purges.seq`), and when to look again.
        self._purges_seen = 0
        self._next_purge_check = 0.0
        self._watching: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[None] | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="meshgate-cache-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="meshgate-cache-write")
        self._rconn: sqlite3.Connection | None = None
        self._wconn: sqlite3.Connection | None = None
        self._writes = 0
        self._opened = False
        #: hash(entry id) -> rid of its row: changed on the event loop only.
        self._rows: dict[int, int] = {}
        #: Entries stored but not yet written (answered from here meanwhile), and their write order.
        self._pending: dict[str, Entry] = {}
        self._queue: list[Entry] = []
        self._flushing: asyncio.Task[None] | None = None

    # -- connections (each used by its own thread only) --

    def _open_writer(self) -> sqlite3.Connection:
        if self._wconn is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("BEGIN IMMEDIATE")  # one process creates or migrates; the others wait
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path}: cache schema {version} is newer than this meshgate's")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                if version == 1:
                    first, drop = filter(str.strip, _MIGRATE_FROM_1.split(";"))
                    conn.execute(first, (time.time(),))
                    conn.execute(drop)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                conn.close()
                raise
            self._wconn = conn
        return self._wconn

    def _open_reader(self) -> sqlite3.Connection:
        if self._rconn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            self._rconn = conn
        return self._rconn

    def _load_index(self) -> dict[int, int]:
        """The live rows' ids, from the file (on the writer thread)."""
        conn = self._open_writer()
        rows = conn.execute("SELECT rid, id FROM cache_rows WHERE expires > ?", (time.time(),))
        return {hash(entry_id): rid for rid, entry_id in rows}

    @staticmethod
    def _last_purge(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM cache_purges").fetchone()[0])

    def _load(self) -> tuple[dict[int, int], int]:
        rows = self._load_index()
        return rows, self._last_purge(self._open_writer())

    async def _open(self) -> None:
        if not self._opened:  # the schema exists before the first read
            if self._opening is None:  # one opening, however many calls wait for it
                self._opening = asyncio.ensure_future(self._open_once())
            try:
                await asyncio.shield(self._opening)
            except Exception:
                self._opening = None  # tried again by the next call
                raise

    async def _open_once(self) -> None:
        loop = asyncio.get_running_loop()
        self._rows, self._purges_seen = await loop.run_in_executor(self._writer, self._load)
        self._next_purge_check = time.time() + PURGE_CHECK_EVERY
        self._opened = True
        self._watching = asyncio.ensure_future(self._watch_purges())

    async def _watch_purges(self) -> None:
        """An idle server too drops what a purge meant within PURGE_CHECK_EVERY (lookups check
        on their own when they are due: a busy loop may run this late)."""
        while True:
            await asyncio.sleep(PURGE_CHECK_EVERY)
            now = time.time()
            if now >= self._next_purge_check:
                try:
                    await self._check_purges(now)
                except Exception as exc:  # the next lookup or turn tries again
                    log.warning("cache: reading %s's purges failed (%s: %s)", self.path, type(exc).__name__, exc)

    def _read_last_purge(self) -> int:
        return self._last_purge(self._open_reader())

    async def _check_purges(self, now: float) -> None:
        """At most every PURGE_CHECK_EVERY, on the reader thread: has another process purged?"""
        self._next_purge_check = now + PURGE_CHECK_EVERY
        seq = await self._on(self._reader, self._read_last_purge)
        if seq > self._purges_seen:
            self._forget_unwritten(seq)

    def _forget_unwritten(self, seq: int) -> None:
        """Another process purged the file: drop what lives only in memory here (entries waiting
        for a hit or for their batch). Lost hits at worst, never an answer the purge meant."""
        self._purges_seen = max(self._purges_seen, seq)
        dropped = len(self._fresh.entries) + len(self._pending)
        self._fresh.clear()
        self._pending.clear()
        self._queue = []
        if dropped:
            log.info("cache: another process purged %s; dropped %d entries held in memory", self.path, dropped)

    async def _on(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
        await self._open()
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # -- reads --

    def _lookup(
        self, rid: int | None, entry_id: str, bucket: str | None, now: float
    ) -> tuple[bytes | None, list[tuple[int, str, str, bytes]]]:
        conn = self._open_reader()
        if rid is not None:
            row = conn.execute(
                "SELECT value FROM cache_rows WHERE rid = ? AND id = ? AND expires > ?", (rid, entry_id, now)
            ).fetchone()
            if row is not None:
                return row[0], []
        if bucket is None:
            return None, []
        rows = conn.execute(
            "SELECT rid, id, guard, vector FROM cache_rows WHERE bucket = ? AND expires > ? AND vector IS NOT NULL "
            "ORDER BY created DESC LIMIT ?",
            (bucket, now, MAX_CANDIDATES),
        ).fetchall()
        return None, rows

    async def lookup(self, entry_id: str, bucket: str | None) -> tuple[bytes | None, Candidates]:
        now = time.time()
        if now >= self._next_purge_check:
            await self._check_purges(now)
        pending = self._pending.get(entry_id)
        if pending is not None and pending.expires > now:
            return pending.value, Candidates()
        fresh = self._fresh.take(entry_id, now)
        if fresh is not None:  # its first hit: worth a row in the file
            self._enqueue(fresh)
            return fresh.value, Candidates()
        await self._open()
        slot = hash(entry_id)
        rid = self._rows.get(slot)
        if rid is None and bucket is None:
            return None, Candidates()  # the miss path: no I/O, no thread
        value, rows = await self._on(self._reader, self._lookup, rid, entry_id, bucket, now)
        if value is None and rid is not None and self._rows.get(slot) == rid:
            del self._rows[slot]  # expired, purged or evicted (maybe by another process)
        for other_rid, other_id, _guard, _vector in rows:  # so that `get` finds a semantic match
            self._rows[hash(other_id)] = other_rid
        found = [row[1:] for row in rows]
        if bucket is not None and value is None:
            held = self._fresh.candidate_rows(bucket, now) + self._pending_rows(bucket, now)
            if held:  # the newest first, as the file's rows come
                known = {row[0] for row in held}
                found = (held + [row for row in found if row[0] not in known])[:MAX_CANDIDATES]
        return value, Candidates.of(found)

    def _pending_rows(self, bucket: str, now: float) -> list[tuple[str, str, bytes]]:
        return [
            (e.id, e.guard, e.vector)
            for e in self._pending.values()
            if e.bucket == bucket and e.vector is not None and e.expires > now
        ]

    async def get(self, entry_id: str) -> bytes | None:
        value, _ = await self.lookup(entry_id, None)
        return value

    # -- writes --

    def _write(self, batch: list[Entry], replaced: list[tuple[int, str]]) -> _Written:
        """One transaction (one WAL commit) for the whole batch, on the writer thread. The rows go
        in a few multi-row INSERTs (chunks of 128, 64, ... 1 rows: a handful of statement texts,
        each prepared once): the thread gives up and takes back the GIL once per statement, not
        once per row as executemany does, and each take-back waits on the busy event loop.
        Not written when the file was purged by another process since this one last looked
        (the write lock orders the two: a purge either comes after this batch and removes what it
        must, or before, and then the batch, built before it was known, is dropped). This
        process's own purges run on this thread too and record themselves as seen (`_purge`), so
        a batch queued behind one is written."""
        conn = self._open_writer()
        removed: list[tuple[int, str]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if (last_purge := self._last_purge(conn)) > self._purges_seen:
                conn.execute("ROLLBACK")
                return _Written(0, [], purged=last_purge)
            if replaced:  # rare: an id stored again (no-cache, or after it expired)
                conn.executemany("DELETE FROM cache_rows WHERE rid = ? AND id = ?", replaced)
            first = (conn.execute("SELECT max(rid) FROM cache_rows").fetchone()[0] or 0) + 1
            start = 0
            while start < len(batch):
                size = _CHUNKS[min(len(batch) - start, MAX_CHUNK)]
                params: list[object] = []
                for i, e in enumerate(batch[start : start + size], first + start):
                    params += (
                        i,
                        e.id,
                        e.team,
                        e.creator,
                        e.model,
                        e.created,
                        e.expires,
                        e.bucket,
                        e.guard,
                        e.vector,
                        e.value,
                    )
                conn.execute(_insert(size), params)
                start += size
            before = self._writes
            self._writes += len(batch)
            if self._writes // SWEEP_EVERY != before // SWEEP_EVERY:
                removed = self._sweep(conn, first + len(batch) - 1)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return _Written(first, removed)

    def _sweep(self, conn: sqlite3.Connection, last: int) -> list[tuple[int, str]]:
        """Delete expired rows, and the oldest past max_entries (both bounded per sweep)."""
        removed = conn.execute(
            "DELETE FROM cache_rows WHERE rid IN (SELECT rid FROM cache_rows WHERE expires <= ? LIMIT ?) "
            "RETURNING rid, id",
            (time.time(), SWEEP_LIMIT),
        ).fetchall()
        if last > self.max_entries:  # rows older than the last max_entries written go (a range at the start)
            removed += conn.execute(
                "DELETE FROM cache_rows WHERE rid IN (SELECT rid FROM cache_rows WHERE rid <= ? LIMIT ?) "
                "RETURNING rid, id",
                (last - self.max_entries, SWEEP_LIMIT),
            ).fetchall()
        return removed

    async def put(self, entry: Entry) -> None:
        """Written at once whatever `persist` says: queued with the others that come meanwhile, in
        one transaction; returns when the entry is on disk."""
        self._fresh.take(entry.id, 0.0)
        self._enqueue(entry)
        assert self._flushing is not None
        await asyncio.shield(self._flushing)

    def put_later(self, entry: Entry) -> asyncio.Task[None] | None:
        """Store `entry`: "on-hit", in the memory tier until it serves a hit (a dict set; nothing
        to wait for); "always" (or an id whose older answer is being written), queued for the
        next batch, returning the flush task when this started one (one task per batch, not one
        per entry)."""
        if self.persist == "on-hit" and entry.id not in self._pending:
            self._fresh.put_later(entry)
            return None
        self._fresh.take(entry.id, 0.0)
        return self._enqueue(entry)

    def _enqueue(self, entry: Entry) -> asyncio.Task[None] | None:
        self._pending[entry.id] = entry
        self._queue.append(entry)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())
            return self._flushing
        return None

    async def _flush(self) -> None:
        # Let the puts of the next few milliseconds join the batch: under load one transaction
        # then carries dozens of entries instead of one each (answers never wait for this).
        await asyncio.sleep(FLUSH_DELAY)
        await self._open()
        while self._queue:
            batch = list({e.id: e for e in self._queue}.values())  # an id stored twice: the last
            self._queue = []
            rows = self._rows
            replaced = [(rid, e.id) for e in batch if (rid := rows.get(hash(e.id))) is not None]
            written: _Written = await self._on(self._writer, self._write, batch, replaced)
            if written.purged:
                self._forget_unwritten(written.purged)
                continue
            for i, e in enumerate(batch):
                self._rows[hash(e.id)] = written.first + i
                if self._pending.get(e.id) is e:
                    del self._pending[e.id]
            for rid, entry_id in written.removed:
                slot = hash(entry_id)
                if self._rows.get(slot) == rid:
                    del self._rows[slot]

    # -- purges --

    def _purge(self, where: PurgeFilter, now: float) -> tuple[int, dict[int, int]]:
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
        if where.containing is not None:
            clauses.append("(" + " OR ".join(["instr(value, ?) > 0"] * len(where.containing)) + ")")
            params.extend(where.containing)  # type: ignore[arg-type]
        sql = "DELETE FROM cache_rows" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        # Erasure: deleted rows are overwritten with zeros in the file, and the WAL (which still
        # holds the pages as they were) is copied back and truncated.
        conn.execute("PRAGMA secure_delete=ON")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Logged in the same transaction, for the other processes sharing the file: they
                # drop what they hold in memory, and a batch of theirs built before this purge
                # sees it when it takes the write lock and is not written (see _write).
                seq = conn.execute("INSERT INTO cache_purges (at) VALUES (?) RETURNING seq", (now,)).fetchall()[0][0]
                conn.execute("DELETE FROM cache_purges WHERE seq < ?", (seq,))
                removed = conn.execute(sql, params).rowcount
                conn.execute("DELETE FROM cache_rows WHERE expires <= ?", (now,))  # and what expired anyway
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.execute("PRAGMA secure_delete=OFF")
        # Seen at once, on this thread: a batch queued behind this purge must not take it for
        # another process's.
        self._purges_seen = max(self._purges_seen, int(seq))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(removed), self._load_index()  # what is left is the file's to say

    async def purge(self, where: PurgeFilter) -> int:
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        # What was stored since (still in memory) and matches goes too.
        now = time.time()
        doomed = {
            e.id
            for e in self._pending.values()
            if where.matches(e.team, e.model, e.created, e.creator, now) and where.holds(e.value)
        }
        if doomed:
            self._queue = [e for e in self._queue if e.id not in doomed]
            for entry_id in doomed:
                del self._pending[entry_id]
        doomed_fresh = self._fresh.purge_now(where)
        removed, rows = await self._on(self._writer, self._purge, where, now)
        self._rows = rows
        return int(removed) + len(doomed) + doomed_fresh

    def _close(self, conn: sqlite3.Connection | None) -> None:
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        """A clean shutdown writes what waited for a hit in memory: a restart keeps every answer."""
        now = time.time()
        for entry in list(self._fresh.entries.values()):
            if entry.expires > now:
                self._enqueue(entry)
        self._fresh.clear()
        if self._flushing is not None:
            await self._flushing
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
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
                pipe.hmget(key, "t", "m", "c", "k", "b", *(("v",) if where.containing is not None else ()))
            metas = await pipe.execute()
            pipe = self._redis.pipeline(transaction=False)
            count = 0
            for key, (t, m, c, k, b, *value) in zip(batch, metas, strict=True):
                if t is None or not where.matches(t.decode(), m.decode(), float(c), k.decode(), now):
                    continue
                if value and (value[0] is None or not where.holds(value[0])):
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
