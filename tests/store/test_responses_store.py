"""Stored responses on the database: they survive a restart and serve other replicas, stay per key,
expire, and an erasure reaches the rows, the memory of running processes and batches in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

import meshgate.store.responses as responses
from meshgate.store import Database, connect, migrate
from meshgate.store.responses import ResponseStore, erase_responses

from .test_database_contract import db_url  # noqa: F401  (the sqlite / postgresql fixture)

SECRET = "jane.doe@example.com"


@pytest.fixture()
async def db(db_url: str) -> AsyncIterator[Database]:  # noqa: F811
    database = await connect(db_url)
    await migrate(database)
    yield database
    await database.close()


def turn(response_id: str, text: str) -> tuple[dict[str, object], list[dict[str, object]]]:
    return (
        {"id": response_id, "object": "response", "output": [{"type": "message", "content": text}]},
        [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
    )


async def test_a_restart_and_another_replica_find_stored_responses(db: Database) -> None:
    first = ResponseStore(db)
    await first.start()
    first.put("key-a", *turn("resp_1", "hello"))
    await first.stop()  # writes what is buffered
    other = ResponseStore(db)  # a new process, or another replica: nothing in its memory
    await other.start()
    found = await other.get("key-a", "resp_1")
    assert found is not None and found.response["id"] == "resp_1"
    assert found.messages[0] == {"role": "user", "content": "hello"}
    assert await other.get("key-b", "resp_1") is None  # another key: as if unknown
    assert await other.get("key-a", "resp_none") is None
    assert not await other.delete("key-b", "resp_1")
    assert await other.delete("key-a", "resp_1")
    assert await db.fetchone("SELECT id FROM responses WHERE id = 'resp_1'") is None
    assert not await other.delete("key-a", "resp_1")
    await other.stop()


async def test_delete_reaches_a_response_still_waiting_for_its_batch(db: Database) -> None:
    store = ResponseStore(db)
    await store.start()
    store.put("k", *turn("resp_fresh", "x"))
    assert await store.delete("k", "resp_fresh")
    await store.stop()
    assert await db.fetchone("SELECT id FROM responses WHERE id = 'resp_fresh'") is None


async def test_expired_rows_are_not_served_and_are_swept(db: Database) -> None:
    store = ResponseStore(db)
    await store.start()
    store.put("k", *turn("resp_old", "x"))
    await store.stop()
    await db.execute("UPDATE responses SET expires_at = ? WHERE id = 'resp_old'", (time.time() - 1,))
    again = ResponseStore(db)
    await again.start()  # sweeps at start
    assert await again.get("k", "resp_old") is None
    assert await db.fetchone("SELECT id FROM responses WHERE id = 'resp_old'") is None
    await again.stop()


async def test_erasure_reaches_rows_memory_and_batches_in_flight(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses, "ERASURE_CHECK_EVERY", 0.05)
    server = ResponseStore(db)
    await server.start()
    server.put("k", *turn("resp_written", f"mail {SECRET}"))
    server.put("k", *turn("resp_clean", "nothing personal"))
    assert server._writer is not None
    await server._writer.flush()
    server._writer.flush_interval = 60.0  # the next one waits in the batch while the erasure runs
    server.put("k", *turn("resp_waiting", f"again {SECRET.upper()}"))
    # `meshgate erase --subject` in another process: rows that hold the subject (any case) go.
    assert await erase_responses(db, [SECRET]) == 1
    await server._writer.flush()  # made before an erasure the server had not seen: not written
    ids = {row["id"] for row in await db.fetchall("SELECT id FROM responses")}
    assert ids == {"resp_clean"}
    await asyncio.sleep(0.2)  # the server sees the erasure and drops its memory tier
    assert await server.get("k", "resp_written") is None
    assert await server.get("k", "resp_waiting") is None
    assert await server.get("k", "resp_clean") is not None  # from the database
    server.put("k", *turn("resp_after", f"new {SECRET}"))  # made after: written as usual
    await server.stop()
    assert await db.fetchone("SELECT id FROM responses WHERE id = 'resp_after'") is not None
