"""A key made a moment ago in another process works on the very next request; unknown keys stay cheap.

The servers here poll the control version only once an hour (`quiet`), so a key that works at once
was found by the check its own miss asked for, not by the periodic poll.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from meshgate.control import policy
from meshgate.control.policy import CHECK_INTERVAL, KeyStore
from meshgate.control.records import new_key
from meshgate.control.service import ControlService
from meshgate.store import connect
from tests.conftest import AppClient
from tests.control.test_auth import mesh  # noqa: F401 - the module fixture (SQLite, then PostgreSQL)
from tests.test_api_errors import assert_openai_error

MODELS = "/v1/models"


class Call(NamedTuple):
    at: float
    by_reload: bool


@pytest.fixture()
async def quiet(mesh: AppClient) -> AsyncIterator[KeyStore]:  # noqa: F811
    """The server's key store, with its periodic poll pushed an hour away for the test."""
    keys = mesh.runtime.keys
    assert keys is not None
    saved = policy.RELOAD_INTERVAL
    policy.RELOAD_INTERVAL = 3600.0
    assert await keys.refreshed()  # the checker now waits an hour (or for a miss)
    yield keys
    policy.RELOAD_INTERVAL = saved
    assert await keys.refreshed()  # and polls every second again


def counted(monkeypatch: pytest.MonkeyPatch, keys: KeyStore, version: Callable[[], Awaitable[int]]) -> list[Call]:
    """Each call of the server's `ControlService.version()` (one SELECT): when, and whether by a reload."""
    calls: list[Call] = []

    async def counting() -> int:
        calls.append(Call(asyncio.get_running_loop().time(), keys._reloading.locked()))
        return await version()

    monkeypatch.setattr(keys.service, "version", counting)
    return calls


async def made_elsewhere(mesh: AppClient, **kwargs: object) -> str:  # noqa: F811
    """A key created as the CLI does: its own connection to the server's database."""
    db = await connect(mesh.runtime.settings.resolved_database_url)
    try:
        return (await ControlService(db).create_key("elsewhere", **kwargs)).key  # type: ignore[arg-type]
    finally:
        await db.close()


async def get(mesh: AppClient, key: str) -> httpx.Response:  # noqa: F811
    return await mesh.http.get(MODELS, headers={"authorization": f"Bearer {key}"})


async def test_a_key_made_elsewhere_works_on_the_very_next_request(mesh: AppClient, quiet: KeyStore) -> None:  # noqa: F811
    key = await made_elsewhere(mesh)
    assert (await get(mesh, key)).status_code == 200
    # A rotated secret too (rotation bumps the version like creation).
    db = await connect(mesh.runtime.settings.resolved_database_url)
    try:
        other = await ControlService(db).create_key("elsewhere")
        assert (await get(mesh, other.key)).status_code == 200
        rotated = await ControlService(db).rotate_key(other.record.id)
    finally:
        await db.close()
    assert (await get(mesh, rotated.key)).status_code == 200


@pytest.mark.slow
async def test_the_cli_in_another_process_then_curl(mesh: AppClient, quiet: KeyStore, tmp_path: Path) -> None:  # noqa: F811
    """The README's `export MESHGATE_KEY=$(meshgate keys create ...)` followed at once by a call."""
    settings = mesh.runtime.settings
    where = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        where += ["--database-url", settings.database_url]
    cli = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meshgate", "keys", "create", "--team", "readme", "--role", "admin", *where),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), 120)
    assert cli.returncode == 0, err.decode()
    key = out.decode().strip()
    assert key.startswith("mg-")
    assert (await get(mesh, key)).status_code == 200


async def test_a_flood_of_random_keys_costs_a_few_shared_checks(
    mesh: AppClient,  # noqa: F811
    quiet: KeyStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert mesh.key is not None
    calls = counted(monkeypatch, quiet, quiet.service.version)
    for _ in range(50):  # a known key: memory only, not one query
        assert (await get(mesh, mesh.key)).status_code == 200
    assert calls == []

    fresh = await made_elsewhere(mesh)
    loop = asyncio.get_running_loop()
    began = loop.time()
    responses = await asyncio.gather(*(get(mesh, new_key()) for _ in range(300)), get(mesh, fresh))
    elapsed = loop.time() - began
    *refused, made = responses
    for response in refused:
        assert_openai_error(response, 401, code="invalid_api_key")
    assert made.status_code == 200
    # Checks start at least CHECK_INTERVAL apart (the reload they triggered reads the version once more).
    checks = [c.at for c in calls if not c.by_reload]
    assert 1 <= len(checks) <= elapsed / CHECK_INTERVAL + 2, (len(checks), elapsed)
    assert all(b - a >= CHECK_INTERVAL * 0.99 for a, b in itertools.pairwise(checks)), checks
    assert len(calls) - len(checks) == 1  # one reload: the version moved once

    # The same number of random keys spread over about half a second: still one check per interval.
    async def later(delay: float) -> httpx.Response:
        await asyncio.sleep(delay)
        return await get(mesh, new_key())

    calls.clear()
    began = loop.time()
    responses = await asyncio.gather(*(later(i * 0.002) for i in range(300)))
    elapsed = loop.time() - began
    for response in responses:
        assert_openai_error(response, 401, code="invalid_api_key")
    checks = [c.at for c in calls]
    assert 3 <= len(checks) <= elapsed / CHECK_INTERVAL + 2, (len(checks), elapsed)
    assert all(b - a >= CHECK_INTERVAL * 0.99 for a, b in itertools.pairwise(checks)), checks

    calls.clear()
    for _ in range(50):
        assert (await get(mesh, mesh.key)).status_code == 200
    assert calls == []


async def test_a_miss_while_the_database_is_away_is_a_401(
    mesh: AppClient,  # noqa: F811
    quiet: KeyStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert mesh.key is not None
    working = quiet.service.version

    async def away() -> int:
        raise OSError("connection refused")

    calls = counted(monkeypatch, quiet, away)
    fresh = await made_elsewhere(mesh)  # committed, but this server cannot read the version now
    with caplog.at_level(logging.WARNING, logger="meshgate.control"):
        unknown = await get(mesh, "mg-unknown")
        for key in (fresh, new_key(), fresh):
            error = assert_openai_error(await get(mesh, key), 401, code="invalid_api_key")
            assert error["message"] == unknown.json()["error"]["message"]
        assert (await get(mesh, mesh.key)).status_code == 200  # known keys need no database
        assert len(calls) >= 3  # every miss asked (the first one also for `unknown`)
        warnings = [r for r in caplog.records if "cannot check the control version" in r.getMessage()]
        assert len(warnings) == 1  # rate-limited: one warning for all the failed checks
        assert all(r.levelno == logging.WARNING for r in warnings)

        counted(monkeypatch, quiet, working)  # the database is back
        assert (await get(mesh, fresh)).status_code == 200
        assert any("readable again" in r.getMessage() for r in caplog.records)


async def test_a_check_that_hangs_refuses_after_miss_wait(
    mesh: AppClient,  # noqa: F811
    quiet: KeyStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    working = quiet.service.version
    released = asyncio.Event()

    async def hanging() -> int:
        await released.wait()
        return await working()

    monkeypatch.setattr(policy, "MISS_WAIT", 0.3)
    counted(monkeypatch, quiet, hanging)
    fresh = await made_elsewhere(mesh)
    loop = asyncio.get_running_loop()
    began = loop.time()
    responses = await asyncio.gather(*(get(mesh, key) for key in (new_key(), fresh, new_key())))
    assert all(r.status_code == 401 for r in responses)
    assert loop.time() - began < 2
    released.set()  # the hung check ends and finds the key: it works without another wait
    counted(monkeypatch, quiet, working)
    assert (await get(mesh, fresh)).status_code == 200
