"""Batched writes off the request path: usage records, audit events.

`submit()` is what the request path calls: synchronous, O(1), never blocks, never raises. Records
wait in a bounded buffer; the writer inserts them with one statement per batch. When the database
is slow or down, the batch stays in the buffer and is retried with backoff; when the buffer is
full, new records are dropped and counted, so memory stays bounded and requests are never slowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from meshgate.store.database import Database

log = logging.getLogger("meshgate.store")


class Record(Protocol):
    def row(self) -> tuple[object, ...]: ...


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0
    failed_batches: int = 0
    queue_depth: int = 0


class BatchWriter:
    def __init__(
        self,
        db: Database,
        insert_sql: str,
        *,
        name: str = "records",
        max_queue: int = 10_000,
        batch_size: int = 100,
        flush_interval: float = 0.05,
        retry_backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.db = db
        self.insert_sql = insert_sql
        self.name = name
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.backoff_min, self.backoff_max = retry_backoff
        self._buffer: deque[Record] = deque()
        self._wakeup = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stats = WriterStats()
        self._backoff = 0.0

    @property
    def stats(self) -> WriterStats:
        self._stats.queue_depth = len(self._buffer)
        return self._stats

    def submit(self, record: Record) -> bool:
        if len(self._buffer) >= self.max_queue:
            self._stats.dropped += 1
            return False
        self._buffer.append(record)
        if len(self._buffer) >= self.batch_size:
            self._wakeup.set()
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-writer")

    async def _write_batch(self) -> bool:
        """Write the oldest batch; True on success. On failure the records stay buffered."""
        batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
        if not batch:
            return True
        try:
            await self.write(batch)
        except Exception as exc:
            self._stats.failed_batches += 1
            log.warning("%s: writing %d records failed (%s); will retry", self.name, len(batch), type(exc).__name__)
            return False
        for _ in batch:
            self._buffer.popleft()
        self._stats.written += len(batch)
        return True

    async def write(self, batch: list[Record]) -> None:
        """Store one batch in one statement. Subclasses that need more (the audit chain) override it."""
        await self.db.executemany(self.insert_sql, [r.row() for r in batch])

    async def flush(self) -> bool:
        """Write everything buffered now; False if the database refused.

        One flush at a time: the background loop and a caller's flush (a report that wants the
        latest records) must not write the same batch twice and then drop twice as many."""
        async with self._flushing:
            while self._buffer:
                if not await self._write_batch():
                    return False
            return True

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._backoff or self.flush_interval)
            self._wakeup.clear()
            if await self.flush():
                self._backoff = 0.0
            else:
                self._backoff = min(max(self._backoff * 2, self.backoff_min), self.backoff_max)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the task, then write what is left, trying for at most `grace` seconds."""
        self._stopping = True
        self._wakeup.set()
        deadline = time.monotonic() + grace
        if self._task is not None:
            # The loop sees `_stopping`, makes one last flush and ends; a hung database gets cancelled.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, grace)
        delay = self.backoff_min
        while self._buffer and time.monotonic() < deadline:
            try:
                flushed = await asyncio.wait_for(self.flush(), max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break  # the database hangs: give up at the deadline rather than block shutdown
            if not flushed:
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, self.backoff_max)
        if self._buffer:
            log.error("%s: %d records could not be written before shutdown", self.name, len(self._buffer))
