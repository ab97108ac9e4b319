"""The cache object: a backend, stores written off the request path, purges, shutdown."""

from __future__ import annotations

import logging
from pathlib import Path

from meshgate.background import Background
from meshgate.cache.backends import Backend, Entry, MemoryBackend, PurgeFilter, RedisBackend, SQLiteBackend
from meshgate.cache.config import CacheConfig, parse_duration
from meshgate.errors import ConfigError

log = logging.getLogger("meshgate.cache")

#: The cache's own SQLite file in the data dir (never the main database).
SQLITE_FILE = "cache.sqlite3"


def backend_for(config: CacheConfig, data_dir: Path, redis_url: str = "") -> Backend:
    """The backend the top-level `cache:` block and the settings select."""
    kind = config.backend
    if kind == "auto":
        kind = "redis" if redis_url else "sqlite"
    if kind == "redis":
        if not redis_url:
            raise ConfigError("cache.backend: redis needs the `redis_url` setting (--redis-url)")
        return RedisBackend(redis_url)
    if kind == "sqlite":
        return SQLiteBackend(
            Path(data_dir) / SQLITE_FILE,
            persist=config.persist,
            memory_entries=config.max_entries,
            memory_bytes=config.max_bytes,
        )
    return MemoryBackend(config.max_entries, config.max_bytes)


class ResponseCache:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # A cache that cannot write only misses more: a failed store is logged, nothing else.
        self._stores = Background(log, "cache: storing an entry")

    def store(self, entry: Entry) -> None:
        """Write `entry` in the background: the answer goes out without waiting for the store. Only
        new work is tracked (a batch's flush once, not each entry that joins it)."""
        pending = self.backend.put_later(entry)
        if pending is not None:
            self._stores.spawn(pending)

    async def flush(self) -> None:
        """Wait for the stores under way."""
        await self._stores.wait()

    async def purge(
        self,
        team: str | None = None,
        model: str | None = None,
        older_than: float | str | None = None,
        key: str | None = None,
        containing: tuple[bytes, ...] | None = None,
    ) -> int:
        """Remove the entries of a team, a model, a key (the key that stored them, whatever the
        scope) and/or older than a duration ("30d" or seconds); all filters given must match, none
        removes everything. Returns how many entries were removed. Erasure requests call this."""
        await self.flush()
        seconds = None if older_than is None else parse_duration(older_than)
        return await self.backend.purge(PurgeFilter(team, model, seconds, key, containing))

    async def close(self) -> None:
        await self.flush()
        await self.backend.close()
