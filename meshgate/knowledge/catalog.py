"""The banks a server knows, in memory: the search path never waits on the database.

A bank made by the CLI (another process) is found on its first use: an unknown name triggers one
reload (single-flight, at most every RELOAD_GAP seconds, so a flood of unknown names costs no more
than that), and a background refresh every REFRESH seconds picks up deletions and changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from meshgate.knowledge.records import BankRecord, BankRecords

log = logging.getLogger("meshgate.knowledge")

RELOAD_GAP = 0.2
REFRESH = 2.0


class BankCatalog:
    def __init__(self, records: BankRecords) -> None:
        self.records = records
        self._banks: dict[str, BankRecord] = {}
        self._loaded_at = 0.0
        self._loading: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    def known(self) -> list[BankRecord]:
        return sorted(self._banks.values(), key=lambda bank: bank.name)

    async def reload(self) -> None:
        self._banks = {bank.name: bank for bank in await self.records.banks()}
        self._loaded_at = time.monotonic()

    async def get(self, name: str) -> BankRecord | None:
        found = self._banks.get(name)
        if found is not None:
            return found
        wait = RELOAD_GAP - (time.monotonic() - self._loaded_at)
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._reload_after(max(wait, 0.0)))
        await asyncio.shield(self._loading)
        return self._banks.get(name)

    async def _reload_after(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            await self.reload()
        except Exception as exc:  # keep what we know; the next miss tries again
            log.warning("knowledge: reading the banks failed (%s)", exc)

    def forget(self, name: str) -> None:
        self._banks.pop(name, None)

    def remember(self, bank: BankRecord) -> None:
        self._banks[bank.name] = bank

    async def start(self) -> None:
        await self.reload()
        self._refresher = asyncio.create_task(self._refresh(), name="knowledge-catalog-refresh")

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            await self._reload_after(0.0)

    async def stop(self) -> None:
        for task in (self._refresher, self._loading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
