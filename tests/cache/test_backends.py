"""The three backends behave alike: lookups, TTL, LRU bounds, purges; SQLite survives a restart."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from meshgate.cache.backends import (
    Backend,
    Candidates,
    Entry,
    MemoryBackend,
    PurgeFilter,
    RedisBackend,
    SQLiteBackend,
)
from meshgate.cache.key import Tenant
from meshgate.cache.semantic import best_match

#: A Redis database of the tests' own: flushed before and after, no other is touched.
REDIS_URL = "redis://127.0.0.1:6379/13"


#: Short test names -> entry ids laid out as the cache lays them out (team:scope:model:digest).
IDS: dict[str, str] = {}


def rid(name: str) -> str:
    return IDS.get(name, f"0:0:0:{name}")


def entry(
    name: str,
    *,
    team: str = "a",
    model: str = "m",
    creator: str = "k1",
    age: float = 0.0,
    ttl: float = 60.0,
    bucket: str | None = None,
    vector: list[float] | None = None,
    guard: str = "g",
) -> Entry:
    now = time.time()
    packed = None
    if vector is not None:
        v = np.asarray(vector, dtype=np.float32)
        packed = (v / np.linalg.norm(v)).tobytes()
    IDS[name] = entry_id = f"{Tenant(team, '', creator).prefix(model)}:{name}"
    return Entry(
        id=entry_id,
        value=f"value of {name}".encode(),
        team=team,
        creator=creator,
        model=model,
        created=now - age,
        expires=now + ttl,
        bucket=bucket,
        vector=packed,
        guard=guard,
    )


async def _redis() -> RedisBackend:
    backend = RedisBackend(REDIS_URL)
    if not await backend.ping():
        pytest.skip("no Redis at 127.0.0.1:6379")
    await backend._redis.flushdb()
    return backend


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made: Backend
    if request.param == "memory":
        made = MemoryBackend()
    elif request.param == "sqlite":
        made = SQLiteBackend(tmp_path / "cache.sqlite3")
    else:
        made = await _redis()
    yield made
    if isinstance(made, RedisBackend):
        await made._redis.flushdb()
    await made.close()


async def test_lookup_get_and_expiry(backend: Backend) -> None:
    value, candidates = await backend.lookup(rid("a:x"), "B")
    assert value is None and candidates.ids == []
    await backend.put(entry("a:x"))
    await backend.put(entry("a:old", ttl=0.2))
    value, _ = await backend.lookup(rid("a:x"), None)
    assert value == b"value of a:x"
    assert await backend.get(rid("a:old")) == b"value of a:old"
    await asyncio.sleep(0.3)
    assert await backend.get(rid("a:old")) is None
    assert await backend.get(rid("a:x")) == b"value of a:x"


async def test_bucket_candidates_and_semantic_match(backend: Backend) -> None:
    await backend.put(entry("a:1", bucket="B", vector=[1, 0, 0]))
    await backend.put(entry("a:2", bucket="B", vector=[0, 1, 0], guard="other"))
    await backend.put(entry("a:3", bucket="C", vector=[1, 0, 0]))
    await backend.put(entry("a:4", bucket="B", vector=[0, 0, 1], ttl=0.1))
    await asyncio.sleep(0.2)
    value, candidates = await backend.lookup(rid("a:none"), "B")
    assert value is None
    assert sorted(candidates.ids) == sorted([rid("a:1"), rid("a:2")])  # not C's, not the expired one
    query = np.asarray([0.96, 0.28, 0], dtype=np.float32)
    match = best_match(candidates, query, "g", 0.95)
    assert match is not None and match.entry_id == rid("a:1")
    assert best_match(candidates, query, "g", 0.99) is None
    # The closest vector of another guard (other numbers, a negation) never matches.
    assert best_match(candidates, np.asarray([0, 1, 0], dtype=np.float32), "g", 0.5) is None


async def test_purge_filters(backend: Backend) -> None:
    await backend.put(entry("a:1", team="a", model="m", creator="k1"))
    await backend.put(entry("a:2", team="a", model="n", creator="k2", bucket="B", vector=[1, 0]))
    await backend.put(entry("b:1", team="b", model="m", creator="k3", age=7200))
    await backend.put(entry("b:2", team="b", model="m", creator="k3"))
    assert await backend.purge(PurgeFilter(team="a", model="n")) == 1
    assert await backend.get(rid("a:2")) is None
    _, candidates = await backend.lookup(rid("a:none"), "B")
    assert candidates.ids == []
    assert await backend.purge(PurgeFilter(older_than=3600)) == 1
    assert await backend.get(rid("b:1")) is None
    assert await backend.purge(PurgeFilter(key="k3")) == 1
    assert await backend.purge(PurgeFilter()) == 1
    assert await backend.get(rid("a:1")) is None


async def test_purge_by_what_the_answer_holds(backend: Backend) -> None:
    """Erasure (`meshgate erase`): entries whose stored answer holds a subject or a document id go,
    with the other filters still applied; the rest stay."""
    await backend.put(entry("a:1", team="a"))
    await backend.put(entry("a:2", team="a"))
    await backend.put(entry("b:2", team="b"))
    assert await backend.purge(PurgeFilter(containing=(b"of a:2", b"nowhere"))) == 1
    assert await backend.get(rid("a:2")) is None and await backend.get(rid("a:1")) is not None
    assert await backend.purge(PurgeFilter(team="a", containing=(b"value of",))) == 1
    assert await backend.get(rid("b:2")) == b"value of b:2"


async def test_memory_backend_is_bounded_by_entries_and_bytes() -> None:
    backend = MemoryBackend(max_entries=3, max_bytes=10_000)
    for i in range(5):
        await backend.put(entry(f"e{i}"))
    assert [await backend.get(rid(f"e{i}")) is not None for i in range(5)] == [False, False, True, True, True]
    await backend.get(rid("e2"))  # recently used: stays
    await backend.put(entry("e5"))
    assert await backend.get(rid("e2")) is not None and await backend.get(rid("e3")) is None
    big = MemoryBackend(max_entries=100, max_bytes=2_000)
    for i in range(10):
        await big.put(Entry(f"x{i}", b"x" * 500, "a", "k", "m", time.time(), time.time() + 60))
    assert big.bytes <= 2_000 and len(big.entries) == 2


async def test_sqlite_survives_a_restart_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "cache.sqlite3"
    first = SQLiteBackend(path)
    await first.put(entry("a:x", bucket="B", vector=[1, 2, 3]))
    await first.close()
    assert path.stat().st_mode & 0o077 == 0
    second = SQLiteBackend(path)
    assert await second.get(rid("a:x")) == b"value of a:x"
    _, candidates = await second.lookup(rid("a:y"), "B")
    assert candidates.ids == [rid("a:x")]
    await second.close()


def _file_bytes(path: Path) -> bytes:
    """The cache file and its WAL, as they are on disk."""
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def test_sqlite_purge_leaves_no_trace_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    backend = SQLiteBackend(path)
    secret = b"the answer about Alice Example, 1970-01-02"
    for i in range(50):  # enough rows for several pages, the secret in some of them
        e = entry(f"p:{i}", team="a" if i % 7 else "gone")
        e.value = secret + b" #%d" % i if i % 7 == 0 else b"x" * 300
        await backend.put(e)
    assert secret in _file_bytes(path)
    assert await backend.purge(PurgeFilter(team="gone")) == 8
    assert secret not in _file_bytes(path)  # overwritten, not only unlinked from the tree
    assert await backend.get(rid("p:1")) == b"x" * 300
    await backend.close()


async def test_sqlite_answers_stores_before_they_are_written_and_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    backend = SQLiteBackend(path, persist="always")
    flush = backend.put_later(entry("w:1"))
    assert flush is not None and not flush.done()
    assert await backend.get(rid("w:1")) == b"value of w:1"  # from memory, before the batch
    assert backend.put_later(entry("w:2")) is None  # joins the batch under way
    await flush
    await backend.close()
    again = SQLiteBackend(path)
    assert [await again.get(rid(n)) for n in ("w:1", "w:2")] == [b"value of w:1", b"value of w:2"]
    await again.close()


async def test_sqlite_miss_path_reads_nothing(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "cache.sqlite3")
    await backend.put(entry("m:1"))

    def no_read(*args: object) -> None:
        raise AssertionError("the miss path read the file")

    backend._lookup = no_read  # type: ignore[method-assign, assignment]
    assert await backend.lookup(rid("m:absent"), None) == (None, Candidates())
    await backend.close()


async def test_sqlite_stale_hints_never_answer_with_another_entry(tmp_path: Path) -> None:
    """Two processes on one file: one purges and writes anew (row numbers are reused); what the
    other remembers of the old rows is a miss, not the new row's answer."""
    path = tmp_path / "cache.sqlite3"
    first, second = SQLiteBackend(path), SQLiteBackend(path)
    assert await second.get(rid("s:old")) is None  # opens `second`
    await first.put(entry("s:old", team="t1"))
    assert await second.get(rid("s:old")) is None  # written after `second` opened: not known there
    assert await second.purge(PurgeFilter()) == 1
    await second.put(entry("s:new", team="t2"))
    assert await first.get(rid("s:old")) is None
    assert await second.get(rid("s:new")) == b"value of s:new"
    # A semantic lookup meets the other process's entries, and `get` then finds them.
    await second.put(entry("s:q", bucket="Q", vector=[1, 0]))
    _, candidates = await first.lookup(rid("s:none"), "Q")
    assert candidates.ids == [rid("s:q")]
    assert await first.get(rid("s:q")) == b"value of s:q"
    await first.close()
    await second.close()


async def test_sqlite_keeps_the_newest_max_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import meshgate.cache.backends as backends

    monkeypatch.setattr(backends, "SWEEP_EVERY", 5)
    backend = SQLiteBackend(tmp_path / "cache.sqlite3", max_entries=10)
    for i in range(40):
        await backend.put(entry(f"n:{i}"))
    kept = [i for i in range(40) if await backend.get(rid(f"n:{i}")) is not None]
    assert 10 <= len(kept) <= 15 and kept == list(range(40 - len(kept), 40))
    assert len(backend._rows) == len(kept)  # the index forgets what the file dropped
    await backend.close()


async def test_sqlite_replaced_entry_and_expired_rows_are_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshgate.cache.backends as backends

    monkeypatch.setattr(backends, "SWEEP_EVERY", 3)
    path = tmp_path / "cache.sqlite3"
    backend = SQLiteBackend(path)
    await backend.put(entry("r:1"))
    replaced = entry("r:1")
    replaced.value = b"newer"
    await backend.put(replaced)
    assert await backend.get(rid("r:1")) == b"newer"
    await backend.put(entry("r:short", ttl=0.05))
    await asyncio.sleep(0.1)
    for i in range(3):
        await backend.put(entry(f"r:f{i}"))
    with sqlite3.connect(path) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM cache_rows")]
    assert sorted(ids) == sorted([rid("r:1"), rid("r:f0"), rid("r:f1"), rid("r:f2")])  # one r:1, no r:short
    await backend.close()


async def test_sqlite_opens_a_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE cache_entries (id TEXT PRIMARY KEY, team TEXT NOT NULL, creator TEXT NOT NULL,
                model TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, bucket TEXT,
                guard TEXT NOT NULL DEFAULT '', vector BLOB, value BLOB NOT NULL);
            PRAGMA user_version=1;
            """
        )
        conn.execute(
            "INSERT INTO cache_entries VALUES ('v1:live', 'a', 'k', 'm', ?, ?, NULL, '', NULL, x'6c697665')",
            (now, now + 60),
        )
        conn.execute(
            "INSERT INTO cache_entries VALUES ('v1:dead', 'a', 'k', 'm', ?, ?, NULL, '', NULL, x'64656164')",
            (now, now - 1),
        )
    backend = SQLiteBackend(path)
    assert await backend.get("v1:live") == b"live"
    assert await backend.get("v1:dead") is None
    assert await backend.purge(PurgeFilter(team="a")) == 1
    await backend.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'cache_entries'").fetchone()[0] == 0


def _file_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(row[0] for row in conn.execute("SELECT id FROM cache_rows"))


async def test_sqlite_on_hit_writes_an_entry_when_it_first_serves_a_hit(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    backend = SQLiteBackend(path)  # persist="on-hit", the default
    assert backend.put_later(entry("h:once")) is None  # a dict set: nothing to wait for
    assert backend.put_later(entry("h:twice")) is None
    await asyncio.sleep(0.1)  # longer than a batch's delay: still nothing written
    await backend.get(rid("h:absent"))  # opens the file
    assert _file_ids(path) == []
    assert await backend.get(rid("h:twice")) == b"value of h:twice"  # its first hit, from memory
    assert backend._flushing is not None
    await backend._flushing
    assert _file_ids(path) == [rid("h:twice")]
    # Another process sharing the file (opened now) finds the written entry, not the other.
    other = SQLiteBackend(path)
    assert await other.get(rid("h:twice")) == b"value of h:twice"
    assert await other.get(rid("h:once")) is None
    await other.close()
    assert await backend.get(rid("h:twice")) == b"value of h:twice"  # now from the file
    await backend.close()
    # A clean shutdown wrote what waited in memory: a restart keeps every answer.
    assert _file_ids(path) == sorted([rid("h:once"), rid("h:twice")])
    again = SQLiteBackend(path)
    assert await again.get(rid("h:once")) == b"value of h:once"
    await again.close()


async def test_sqlite_on_hit_drops_entries_evicted_before_any_hit(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    backend = SQLiteBackend(path, memory_entries=2)
    for name in ("e:1", "e:2", "e:3"):
        backend.put_later(entry(name))
    assert await backend.get(rid("e:1")) is None  # evicted by e:3 before any hit: never written
    assert [await backend.get(rid(n)) for n in ("e:2", "e:3")] == [b"value of e:2", b"value of e:3"]
    await backend.close()
    assert _file_ids(path) == sorted([rid("e:2"), rid("e:3")])


async def test_sqlite_on_hit_semantic_candidates_include_entries_in_memory(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "cache.sqlite3")
    await backend.put(entry("c:file", bucket="B", vector=[1, 0, 0]))  # written
    backend.put_later(entry("c:mem", bucket="B", vector=[0, 1, 0]))  # in memory
    backend.put_later(entry("c:elsewhere", bucket="C", vector=[0, 1, 0]))
    _, candidates = await backend.lookup(rid("c:none"), "B")
    assert candidates.ids == [rid("c:mem"), rid("c:file")]  # newest first
    assert candidates.vectors is not None and candidates.vectors.shape == (2, 3)
    match = best_match(candidates, np.asarray([0, 1, 0], dtype=np.float32), "g", 0.9)
    assert match is not None and await backend.get(match.entry_id) == b"value of c:mem"
    await backend.close()


async def test_sqlite_purge_by_another_process_reaches_entries_held_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`meshgate erase` / `cache purge` run in their own process: a server's entries that live only
    in its memory (waiting for a hit, or for their batch) must not outlive the purge."""
    import meshgate.cache.backends as backends

    monkeypatch.setattr(backends, "PURGE_CHECK_EVERY", 0.05)
    monkeypatch.setattr(backends, "FLUSH_DELAY", 0.3)
    path = tmp_path / "cache.sqlite3"
    server = SQLiteBackend(path)
    await server.put(entry("x:written", team="t"))
    server.put_later(entry("x:waiting", team="t"))
    promoted = entry("x:promoted", team="t")
    server.put_later(promoted)
    assert await server.get(rid("x:promoted")) == b"value of x:promoted"  # queued for the next batch
    batch = server._flushing
    assert batch is not None and not batch.done()
    cli = SQLiteBackend(path)
    assert await cli.purge(PurgeFilter(team="t")) == 1  # it sees the file: the written entry
    await cli.close()
    await batch  # the batch took the write lock after the purge: it is not written
    assert _file_ids(path) == []
    await asyncio.sleep(0.06)
    assert await server.get(rid("x:waiting")) is None  # dropped on seeing the purge
    assert await server.get(rid("x:promoted")) is None
    assert await server.get(rid("x:written")) is None
    # Its own purges are known to it: nothing more is dropped for them.
    server.put_later(entry("x:after", team="u"))
    assert await server.purge(PurgeFilter(team="t")) == 0
    await asyncio.sleep(0.06)
    assert await server.get(rid("x:after")) == b"value of x:after"
    await server.close()


async def test_sqlite_a_batch_queued_behind_its_own_purge_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write thread runs this process's purge, then a batch queued meanwhile: the purge is its
    own, so the batch is no "batch from before another process's purge" and is written."""
    import meshgate.cache.backends as backends

    monkeypatch.setattr(backends, "FLUSH_DELAY", 0.0)
    path = tmp_path / "cache.sqlite3"
    backend = SQLiteBackend(path, persist="always")
    await backend.put(entry("q:old", team="gone"))
    backend.put_later(entry("q:held", team="kept"))  # `on-hit` would hold it; `always` queues it
    await backend._flushing  # type: ignore[misc]
    purging = asyncio.create_task(backend.purge(PurgeFilter(team="gone")))
    for _ in range(5):
        await asyncio.sleep(0)  # the purge is on the write thread
    flush = backend.put_later(entry("q:new", team="kept"))
    assert await purging == 1
    assert flush is not None
    await flush
    assert _file_ids(path) == sorted([rid("q:held"), rid("q:new")])
    await backend.close()
