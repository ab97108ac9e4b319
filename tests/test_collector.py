"""Full garbage collections wait for an idle moment (or, under unbroken load, for the interval)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from meshgate.collector import Collector
from tests.conftest import AppClient


class Node:
    """An object in a reference cycle: only a full-enough collection frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def full_passes() -> Iterator[list[int]]:
    """Counts the collector's passes over the oldest generation while the test runs."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(info["collected"])

    saved = gc.get_threshold()
    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)
        gc.set_threshold(*saved)
        gc.unfreeze()


def old_cycle() -> weakref.ref[Node]:
    """A cycle that reached the oldest generation alive and then became garbage there, where only
    a full pass can free it."""
    node = Node()
    ref = weakref.ref(node)
    gc.collect(1)  # survivors of the young passes move to the oldest generation (and count there)
    del node
    gc.collect(1)
    assert ref() is not None
    return ref


async def test_a_full_pass_waits_until_no_request_is_in_flight(full_passes: list[int]) -> None:
    collector = Collector(interval=3600, check_every=0.05)
    collector.start()
    try:
        assert gc.get_threshold()[2] > 1_000_000  # the interpreter's own full passes are off
        full_passes.clear()  # start() makes one itself
        collector.active = 1
        garbage = old_cycle()
        await asyncio.sleep(0.3)
        assert full_passes == [] and garbage() is not None  # busy: no pause for anyone
        collector.active = 0
        await asyncio.sleep(0.3)
        assert full_passes and garbage() is None  # idle: collected
    finally:
        collector.stop()


async def test_under_unbroken_load_the_interval_still_collects(full_passes: list[int]) -> None:
    collector = Collector(interval=0.2, check_every=0.05)
    collector.start()
    try:
        collector.active = 5
        garbage = old_cycle()
        await asyncio.sleep(0.6)
        assert garbage() is None
    finally:
        collector.stop()


async def test_stop_gives_the_schedule_back_and_zero_leaves_it_alone(full_passes: list[int]) -> None:
    before = gc.get_threshold()
    collector = Collector(interval=60)
    collector.start()
    assert gc.get_threshold() != before
    collector.stop()
    assert gc.get_threshold() == before
    untouched = Collector(interval=0)
    untouched.start()
    assert gc.get_threshold() == before
    untouched.stop()


async def test_requests_in_flight_are_counted(proxy_client: AppClient) -> None:
    collector: Collector = proxy_client.app.state.collector
    assert collector.active == 0
    call = asyncio.ensure_future(
        proxy_client.http.post(
            "/v1/chat/completions", json={"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        )
    )
    await asyncio.sleep(0.2)  # the "slow" upstream takes 0.5 s
    assert collector.active == 1
    response = await call
    assert response.status_code == 200
    assert collector.active == 0
    await proxy_client.http.get("/v1/models/nope")  # an error answer is counted out too
    assert collector.active == 0
