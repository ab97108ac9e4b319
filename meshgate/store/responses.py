"""Stored responses of the Responses API (`previous_response_id`, `GET /v1/responses/{id}`).

Each entry belongs to the key that made it; a lookup by another key finds nothing (a 404, the same
as an unknown id), so ids never leak across keys.

Two tiers. In memory, per process: the most recent responses, bounded by count and by bytes (the
least recently used goes first), so a conversation continued on the replica that answered it costs
no database round trip. In the database (table `responses`, migration 0012), once a `db` is given
(the server always gives one): every stored response, written in batches off the request path and
kept RETENTION seconds (30 days, as OpenAI keeps them), so `previous_response_id` survives a
restart and works on every replica sharing the database; a memory miss reads the row once.

Erasure (`meshgate erase --subject`, usually another process) bumps the `erasures` counter in
`meshgate_state` and deletes the matching rows in one transaction. Every process looks at that
counter every ERASURE_CHECK_EVERY seconds and, when it moved, drops its memory tier (it cannot tell
which entries the erasure meant). A batch is written in a transaction that first reads the counter
and leaves out the responses made before an erasure their process had not seen yet (their content
may hold the subject). Erasures and batches take the same named lock (`Database.exclusive(LOCK)`),
so one of them always sees the other's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec

from meshgate.store.batch_writer import BatchWriter, Record
from meshgate.store.database import Database, Queries, holding, holds

log = logging.getLogger("meshgate.responses")

#: At most this many responses are kept in memory...
MAX_RESPONSES = 10_000
#: ...and at most this many bytes of them (their JSON size), all keys together.
MAX_BYTES = 64 * 1024 * 1024
#: How often a process looks whether an erasure ran elsewhere (seconds).
ERASURE_CHECK_EVERY = 1.0
#: How often expired rows are deleted (seconds).
SWEEP_EVERY = 3600.0

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


@dataclass
class StoredResponse:
    owner: str
    #: The conversation up to and including this response, as chat messages (no instructions).
    messages: list[dict[str, Any]]
    #: The response object as it was returned.
    response: dict[str, Any]
    size: int


#: How long the database keeps a stored response (seconds): 30 days, as OpenAI keeps them.
RETENTION = 30 * 86400
#: The named lock of writes and erasures.
LOCK = "responses"

INSERT_RESPONSE = "INSERT INTO responses (id, owner, created_at, expires_at, body) VALUES (?, ?, ?, ?, ?)"


@dataclass(frozen=True)
class ResponseRow:
    """One response waiting for its batch, and the erasure count its process knew when it was made."""

    id: str
    owner: str
    created: float
    body: str
    erasures: int

    def row(self) -> tuple[object, ...]:
        return (self.id, self.owner, self.created, self.created + RETENTION, self.body)


async def erasure_count(q: Queries) -> int:
    row = await q.fetchone("SELECT value FROM meshgate_state WHERE name = 'erasures'")
    return int(row["value"]) if row else 0


async def erase_responses(db: Database, needles: list[str]) -> int:
    """Bump the counter and delete the stored responses holding any needle (case-insensitive), in
    one transaction under LOCK. Returns how many went."""
    async with db.exclusive(LOCK) as tx:
        await tx.execute("UPDATE meshgate_state SET value = value + 1 WHERE name = 'erasures'")
        doomed: set[str] = set()
        for needle in needles:
            rows = await tx.fetchall(f"SELECT id FROM responses WHERE {holds(db.dialect, 'body')}", (holding(needle),))
            doomed.update(str(r["id"]) for r in rows)
        for response_id in doomed:
            await tx.execute("DELETE FROM responses WHERE id = ?", (response_id,))
    return len(doomed)


class ResponsesWriter(BatchWriter):
    def __init__(self, db: Database) -> None:
        super().__init__(db, INSERT_RESPONSE, name="responses")

    async def write(self, batch: list[Record]) -> None:
        async with self.db.exclusive(LOCK) as tx:
            now = await erasure_count(tx)
            rows = [r.row() for r in batch if isinstance(r, ResponseRow) and r.erasures >= now]
            if len(rows) < len(batch):
                log.info(
                    "responses: %d stored responses made before an erasure were not written", len(batch) - len(rows)
                )
            if rows:
                await tx.executemany(INSERT_RESPONSE, rows)


class ResponseStore:
    def __init__(
        self, db: Database | None = None, max_responses: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES
    ) -> None:
        self.db = db
        self.max_responses, self.max_bytes = max_responses, max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self.bytes = 0
        self._writer = ResponsesWriter(db) if db is not None else None
        self._erasures = 0
        self._watching: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        if self.db is None or self._writer is None:  # memory only
            return
        self._erasures = await erasure_count(self.db)
        await self._sweep()
        await self._writer.start()
        self._watching = asyncio.create_task(self._watch(), name="responses-erasures")

    async def stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
            self._watching = None
        if self._writer is not None:
            await self._writer.stop()

    async def _sweep(self) -> None:
        assert self.db is not None
        await self.db.execute("DELETE FROM responses WHERE expires_at <= ?", (time.time(),))

    async def _watch(self) -> None:
        swept = time.monotonic()
        while True:
            await asyncio.sleep(ERASURE_CHECK_EVERY)
            try:
                await self.check_erasures()
                if time.monotonic() - swept > SWEEP_EVERY:
                    swept = time.monotonic()
                    await self._sweep()
            except Exception as exc:  # the database is away: try again next turn
                log.warning("responses: checking for erasures failed (%s: %s)", type(exc).__name__, exc)

    async def check_erasures(self) -> None:
        """Drop the memory tier when an erasure ran since the last look."""
        assert self.db is not None
        count = await erasure_count(self.db)
        if count != self._erasures:
            self._erasures = count
            self._entries.clear()
            self.bytes = 0

    def put(self, owner: str, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        body = _encode({"messages": messages, "response": response})
        self._remember(str(response["id"]), StoredResponse(owner, messages, response, len(body)))
        if self._writer is not None:
            self._writer.submit(ResponseRow(str(response["id"]), owner, time.time(), body.decode(), self._erasures))

    def _remember(self, response_id: str, entry: StoredResponse) -> None:
        if entry.size > self.max_bytes:
            return  # larger than the whole memory tier: only in the database
        self._forget(response_id)
        self._entries[response_id] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_responses or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def _forget(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.bytes -= entry.size
        return entry

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            if entry.owner != owner:
                return None
            self._entries.move_to_end(response_id)
            return entry
        if self.db is None:
            return None
        row = await self.db.fetchone(
            "SELECT owner, body FROM responses WHERE id = ? AND expires_at > ?", (response_id, time.time())
        )
        if row is None or str(row["owner"]) != owner:
            return None
        body = str(row["body"])
        stored = _decode(body)
        entry = StoredResponse(owner, stored["messages"], stored["response"], len(body))
        self._remember(response_id, entry)
        return entry

    async def delete(self, owner: str, response_id: str) -> bool:
        entry = self._entries.get(response_id)
        if entry is not None and entry.owner != owner:
            return False
        self._forget(response_id)
        if self.db is None or self._writer is None:
            return entry is not None
        await self._writer.flush()  # a row still in the batch would land after the delete
        found = await self.db.fetchone("SELECT owner FROM responses WHERE id = ?", (response_id,))
        if found is None or str(found["owner"]) != owner:
            return entry is not None
        await self.db.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner))
        return True
