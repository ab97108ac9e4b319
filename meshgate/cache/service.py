"""The cache object: a backend, stores written off the request path, purges, shutdown."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

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
        return SQLiteBackend(Path(data_dir) / SQLITE_FILE)
    return MemoryBackend(config.max_entries, config.max_bytes)


class ResponseCache:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._pending: set[asyncio.Future[None]] = set()

    def store(self, entry: Entry) -> None:
        """Write `entry` in the background: the answer goes out without waiting for the store."""
        task = asyncio.ensure_future(self._put(entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, entry: Entry) -> None:
        try:
            await self.backend.put(entry)
        except Exception as exc:  # a cache that cannot write only misses more
            log.warning("cache: storing an entry failed (%s: %s)", type(exc).__name__, exc)

    async def flush(self) -> None:
        """Wait for the stores under way."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def purge(
        self,
        team: str | None = None,
        model: str | None = None,
        older_than: float | str | None = None,
        key: str | None = None,
    ) -> int:
        """Remove the entries of a team, a model, a key (the key that stored them, whatever the
        scope) and/or older than a duration ("30d" or seconds); all filters given must match, none
        removes everything. Returns how many entries were removed. Erasure requests call this."""
        await self.flush()
        seconds = None if older_than is None else parse_duration(older_than)
        return await self.backend.purge(PurgeFilter(team, model, seconds, key))

    async def close(self) -> None:
        await self.flush()
        await self.backend.close()
