"""One aiohttp connection pool per upstream origin, shared by the models that call it.

A route's deployments, or several models of mesh.yaml, often reach the same server (two models on
one vLLM, the same API behind two names). Each model's own pool kept its own warm connections:
with N pools to one origin every pool is colder, more requests wait for a connection or open one,
and the gateway spent about 5% more per call (bench/cache_overhead.py, a two-deployment route to
one upstream: 0.92 of a flat model's throughput with a pool each, 0.97 with one). Sessions stay
per model (their timeouts and headers are the model's); only the connector is shared.

Pools belong to an event loop (aiohttp binds them to the running loop), so the registry is per
loop; a pool is closed when the last model using it closes. Pools of different sizes
(`max_connections`) are not shared: each keeps the bound its config promises.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

KEEPALIVE_SECONDS = 60


@dataclass
class _Pool:
    connector: aiohttp.TCPConnector
    users: int = 0


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], _Pool]] = weakref.WeakKeyDictionary()


def _origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def acquire(base_url: str, limit: int) -> aiohttp.TCPConnector:
    """The pool for `base_url`'s origin and this size, made on first use; release it when done."""
    pools = _pools.setdefault(asyncio.get_running_loop(), {})
    key = (_origin(base_url), limit)
    pool = pools.get(key)
    if pool is None or pool.connector.closed:
        pool = pools[key] = _Pool(aiohttp.TCPConnector(limit=limit, keepalive_timeout=KEEPALIVE_SECONDS))
    pool.users += 1
    return pool.connector


async def release(connector: aiohttp.TCPConnector) -> None:
    """One user fewer; the last one closes the pool (whichever loop it was made on)."""
    for pools in list(_pools.values()):
        for key, pool in list(pools.items()):
            if pool.connector is connector:
                pool.users -= 1
                if pool.users <= 0:
                    del pools[key]
                    await connector.close()
                return
    await connector.close()  # not in the registry (forgotten already): nobody else uses it


def session(base_url: str, limit: int, timeout: aiohttp.ClientTimeout, **options: object) -> aiohttp.ClientSession:
    """A model's own session over the shared pool of its upstream's origin (close it with `close`)."""
    return aiohttp.ClientSession(
        connector=acquire(base_url, limit),
        connector_owner=False,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        **options,  # type: ignore[arg-type]
    )


async def close(session: aiohttp.ClientSession) -> None:
    """Close a session made by `session` and release its pool."""
    connector = session.connector
    await session.close()
    if isinstance(connector, aiohttp.TCPConnector):
        await release(connector)
