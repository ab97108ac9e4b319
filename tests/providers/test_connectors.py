"""Models that call the same upstream origin share one connection pool; each keeps its session."""

from __future__ import annotations

import aiohttp

from meshgate.providers import connectors


async def test_one_pool_per_origin_and_size_closed_by_its_last_user() -> None:
    timeout = aiohttp.ClientTimeout(total=5)
    a = connectors.session("http://127.0.0.1:18080/v1", 100, timeout)
    b = connectors.session("http://127.0.0.1:18080/other", 100, timeout)  # same origin, other path
    c = connectors.session("http://127.0.0.1:18081/v1", 100, timeout)  # another port
    d = connectors.session("http://127.0.0.1:18080/v1", 10, timeout)  # another bound: its own pool
    assert a.connector is b.connector
    assert a.connector is not c.connector and a.connector is not d.connector
    shared = a.connector
    assert shared is not None
    await connectors.close(a)
    assert a.closed and not shared.closed and not b.closed  # b still uses the pool
    await connectors.close(b)
    assert shared.closed
    again = connectors.session("http://127.0.0.1:18080/v1", 100, timeout)
    assert again.connector is not shared and again.connector is not None and not again.connector.closed
    for session in (c, d, again):
        await connectors.close(session)
    assert all(s.closed for s in (c, d, again))
