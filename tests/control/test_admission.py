"""Admission: rate limits and budgets decided together, in one Redis round trip, exact across replicas.

The round trips are counted on the wire: every write of a Redis connection in this process (one
per command sent alone, one per pipeline) is recorded while a test looks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from meshgate.control.admission import Admission, RedisAdmission, Verdict
from meshgate.control.budget import BudgetRefusal, BudgetScope, MemoryLedger, RedisLedger, Reservation, to_nano
from meshgate.control.ratelimit import MemoryLimiter, RedisLimiter, Scope
from meshgate.control.records import Limits
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime, upstream_models_yaml
from tests.control.test_budget import REDIS_URL, Seeds
from tests.control.test_ratelimit import fresh_window
from tests.store.test_database_contract import _drop_schema as drop_schema
from tests.store.test_database_contract import _pg_url as pg_url

CHAT = "/v1/chat/completions"


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every write to Redis from now on: one entry per round trip."""
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        sent.append(b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks))
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
    yield sent


#: The admission script's first argument, as sent: an admission, a correction.
ADMIT, CORRECT = b"$5\r\nadmit\r\n", b"$7\r\ncorrect\r\n"


def background(packet: bytes, correct: bytes) -> bool:
    """A write that is not on a call's path: a batch of corrections, or the hello of a new pooled
    connection (a batch goes out on a connection of its own while calls go on)."""
    return correct in packet or packet.split(b"\r\n")[2] in (b"HELLO", b"CLIENT", b"SELECT", b"AUTH")


def make_redis(seeds: Seeds, tag: str) -> Admission:
    limiter = RedisLimiter(REDIS_URL, prefix=f"test:adm:{tag}:rl")
    ledger = RedisLedger(seeds, REDIS_URL, prefix=f"test:adm:{tag}:budget")
    return Admission.of(limiter, ledger)


@pytest.fixture(params=["memory", "redis"])
async def make_admission(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[Seeds], Admission]]:
    made: list[Admission] = []
    tag = uuid.uuid4().hex

    def make(seeds: Seeds) -> Admission:
        if request.param == "memory":
            admission = Admission.of(MemoryLimiter(), MemoryLedger(seeds))
        else:
            admission = make_redis(seeds, tag)
            assert isinstance(admission, RedisAdmission)
        made.append(admission)
        return admission

    yield make
    for admission in made:
        await admission.limiter.close()
        await admission.ledger.close()


def budgets(limit: float = 1.0) -> list[BudgetScope]:
    return [
        BudgetScope("key", f"k-{uuid.uuid4().hex}", limit, "day"),
        BudgetScope("team", f"t-{uuid.uuid4().hex}", 100.0, "month"),
    ]


def rate(rpm: int | None = 100, tpm: int | None = 100_000) -> list[Scope]:
    tag = uuid.uuid4().hex
    return [Scope(f"key:{tag}", rpm, tpm), Scope(f"team:{tag}", 1000, None)]


async def test_one_round_trip_per_admitted_call(wire: list[bytes]) -> None:
    await fresh_window()
    admission = make_redis(Seeds(spent=0.1), uuid.uuid4().hex)
    assert isinstance(admission, RedisAdmission)
    try:
        scopes, slots = rate(), budgets()
        first = await admission.admit(scopes, 500, slots, to_nano(0.01))  # loads the script, seeds the slots
        assert isinstance(first.budget, Reservation)
        await admission.flush()
        wire.clear()
        admit, correct = ADMIT, CORRECT
        for i in range(5):
            before = len(wire)
            verdict = await admission.admit(scopes, 500, slots, to_nano(0.01))
            assert verdict.decision is not None and verdict.decision.admitted
            assert verdict.decision.states[0].requests == i + 2
            assert isinstance(verdict.budget, Reservation)
            # One round trip: the admission script (meanwhile a batch of earlier corrections may
            # have gone out on a connection of its own, and a new connection says hello).
            assert len([w for w in wire[before:] if admit in w]) == 1
            assert not [w for w in wire[before:] if admit not in w and not background(w, correct)]
            # The correction lowers both counts: nothing is sent before the response...
            sent = len(wire)
            await admission.correct(scopes, verdict.decision, 120 - 500, verdict.budget, to_nano(0.002))
            assert len(wire) == sent
        # ...it goes out after it, batched with other calls' corrections in one transaction.
        await admission.flush()
        scripts = [w for w in wire if admit in w]
        assert len(scripts) == 5 and all(w.count(b"EVALSHA") == 1 for w in scripts)
        batches = [w for w in wire if correct in w]
        assert 1 <= len(batches) <= 5 and all(b"MULTI" in w and b"SCRIPT" not in w for w in batches)
        assert sum(w.count(correct) for w in batches) == 5 and not [w for w in wire if b"SCRIPT" in w]
        assert all(background(w, correct) for w in wire if admit not in w)
        probe = await admission.admit(scopes, 0, slots, 0)
        assert probe.decision is not None and probe.decision.states[0].tokens == 500 + 5 * 120
        fields = await admission._redis.hgetall(probe.budget.slots[0])  # type: ignore[union-attr]
        assert int(fields[b"spent"]) == to_nano(0.1) + 5 * to_nano(0.002)
        assert int(fields[b"reserved"]) == to_nano(0.01)  # the first call's, never settled here
    finally:
        await admission.limiter.close()
        await admission.ledger.close()


async def test_a_correction_that_raises_a_count_is_one_round_trip_before_returning(wire: list[bytes]) -> None:
    await fresh_window()
    admission = make_redis(Seeds(), uuid.uuid4().hex)
    try:
        scopes, slots = rate(tpm=1000), budgets()
        verdict = await admission.admit(scopes, 100, slots, to_nano(0.1))
        assert isinstance(verdict.budget, Reservation) and verdict.decision is not None
        await admission.flush()
        wire.clear()
        await admission.correct(scopes, verdict.decision, 50, verdict.budget, to_nano(0.3))  # over its estimate
        assert len(wire) == 1 and wire[0].count(b"EVALSHA") == 1 and CORRECT in wire[0]
        probe = await admission.admit(scopes, 0, slots, to_nano(0.75))  # no flush: 0.3 + 0.75 > 1.0
        assert probe.decision is not None and probe.decision.states[0].tokens == 150
        assert isinstance(probe.budget, BudgetRefusal) and abs(probe.budget.spent_usd - 0.3) < 1e-9
    finally:
        await admission.limiter.close()
        await admission.ledger.close()


async def test_a_new_budget_period_reads_its_seeds_then_admits(wire: list[bytes]) -> None:
    seeds = Seeds(spent=0.95)
    admission = make_redis(seeds, uuid.uuid4().hex)
    try:
        scopes, slots = rate(), budgets()
        refused = await admission.admit(scopes, 10, slots, to_nano(0.1))  # 0.95 + 0.1 > 1.0
        assert isinstance(refused.budget, BudgetRefusal) and refused.budget.scope == slots[0]
        assert seeds.calls == 2 and abs(refused.budget.spent_usd - 0.95) < 1e-9
        # The rate limit charged the call once (not once per run of the script).
        assert refused.decision is not None and refused.decision.states[0].requests == 1
        wire.clear()
        assert isinstance((await admission.admit(scopes, 10, slots, to_nano(0.05))).budget, Reservation)
        assert len(wire) == 1 and seeds.calls == 2
    finally:
        await admission.limiter.close()
        await admission.ledger.close()


async def test_a_rate_limit_refusal_reserves_no_budget(make_admission: Callable[[Seeds], Admission]) -> None:
    await fresh_window()
    admission = make_admission(Seeds())
    scopes, slots = rate(rpm=2), budgets(limit=0.25)
    outcomes = [await admission.admit(scopes, 10, slots, to_nano(0.1)) for _ in range(4)]
    assert [o.decision.admitted for o in outcomes if o.decision] == [True, True, False, False]
    assert [type(o.budget) for o in outcomes] == [Reservation, Reservation, type(None), type(None)]
    refused = outcomes[2].decision
    assert refused is not None and refused.refused_scope == scopes[0] and refused.refused_limit == "requests"
    # 0.2 of 0.25 reserved: the refused calls took nothing; 0.05 still fits.
    other = [Scope(f"key:{uuid.uuid4().hex}", 10, None)]
    assert isinstance((await admission.admit(other, 10, slots, to_nano(0.05))).budget, Reservation)
    assert isinstance((await admission.admit(other, 10, slots, to_nano(0.01))).budget, BudgetRefusal)


async def test_a_budget_refusal_counts_the_request_and_gives_its_tokens_back(
    make_admission: Callable[[Seeds], Admission],
) -> None:
    """As when the budget step refused after the rate-limit step charged: same headers, same counts."""
    await fresh_window()
    admission = make_admission(Seeds())
    scopes, slots = rate(rpm=10, tpm=1000), budgets(limit=0.1)
    assert isinstance((await admission.admit(scopes, 300, slots, to_nano(0.08))).budget, Reservation)
    refused = await admission.admit(scopes, 300, slots, to_nano(0.08))
    assert isinstance(refused.budget, BudgetRefusal) and refused.budget.scope == slots[0]
    assert refused.decision is not None and refused.decision.admitted
    assert refused.decision.headers()["x-ratelimit-remaining-requests"] == "8"
    assert refused.decision.headers()["x-ratelimit-remaining-tokens"] == "400"
    await admission.correct(scopes, refused.decision, -300, None, 0)  # it used nothing
    await admission.flush()
    probe = await admission.admit(scopes, 0, [], 0)
    assert probe.decision is not None and (probe.decision.states[0].requests, probe.decision.states[0].tokens) == (
        3,
        300,
    )


async def test_budgets_alone_and_rate_limits_alone(make_admission: Callable[[Seeds], Admission]) -> None:
    await fresh_window()
    admission = make_admission(Seeds())
    slots = budgets(limit=0.3)
    only_budget = [await admission.admit([], 0, slots, to_nano(0.1)) for _ in range(4)]
    assert all(v.decision is None for v in only_budget)
    assert [isinstance(v.budget, Reservation) for v in only_budget] == [True, True, True, False]
    scopes = rate(rpm=1)
    only_rate = [await admission.admit(scopes, 5, [], 0) for _ in range(2)]
    assert [v.decision.admitted for v in only_rate if v.decision] == [True, False]
    assert all(v.budget is None for v in only_rate)


async def test_two_replicas_never_exceed_a_limit_or_a_budget() -> None:
    """Concurrent calls split over two replicas (each its own connections) sharing one Redis."""
    await fresh_window()
    tag = uuid.uuid4().hex
    replicas = [make_redis(Seeds(spent=0.25), tag), make_redis(Seeds(spent=0.25), tag)]
    try:
        scopes, slots = rate(rpm=11, tpm=None), budgets(limit=1.0)

        async def call(i: int) -> Verdict:
            return await replicas[i % 2].admit(scopes, 10, slots, to_nano(0.1))

        verdicts = await asyncio.gather(*(call(i) for i in range(40)))
        charged = [v for v in verdicts if v.decision is not None and v.decision.admitted]
        assert len(charged) == 11  # the rpm, exactly
        assert sum(isinstance(v.budget, Reservation) for v in verdicts) == 7  # 0.25 + 7 x 0.1 <= 1.0
        assert sum(isinstance(v.budget, BudgetRefusal) for v in verdicts) == 4
        assert sorted(v.decision.states[0].requests for v in charged if v.decision) == list(range(1, 12))

        # Tokens, with corrections from both replicas in flight meanwhile.
        token_scopes = rate(rpm=None, tpm=1000)
        first = await asyncio.gather(*(replicas[i % 2].admit(token_scopes, 300, [], 0) for i in range(6)))
        assert sum(bool(v.decision and v.decision.admitted) for v in first) == 3
        for i, verdict in enumerate(first):
            if verdict.decision is not None and verdict.decision.admitted:
                await replicas[i % 2].correct(token_scopes, verdict.decision, 100 - 300, None, 0)
        await asyncio.gather(*(r.flush() for r in replicas))
        second = await asyncio.gather(*(replicas[i % 2].admit(token_scopes, 300, [], 0) for i in range(6)))
        assert sum(bool(v.decision and v.decision.admitted) for v in second) == 2  # 300 used + 2 x 300 <= 1000
    finally:
        for replica in replicas:
            await replica.limiter.close()
            await replica.ledger.close()


@pytest.mark.postgres
async def test_two_servers_sharing_redis_and_postgresql(
    tmp_path: Path, fake_upstream: FakeOpenAI, wire: list[bytes]
) -> None:
    """Two gateways, one database and one Redis: a key's RPM and budget hold across both, and each
    call admitted takes one admission script on the wire."""
    url, schema = await pg_url()
    yaml = upstream_models_yaml(fake_upstream.base_url)
    servers: list[AppClient] = []
    try:
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            runtime = make_runtime(tmp_path / name, yaml, database_url=url, redis_url=REDIS_URL)
            servers.append(await AppClient.started(runtime))
        control = servers[0].runtime.control
        assert control is not None
        # bench costs $2.5 / $10 per million tokens; this call's worst case is $0.000425.
        body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
        limited = (await control.create_key("shared", limits=Limits(rpm=7, tpm=1_000_000))).key
        frugal = (
            await control.create_key("frugal", limits=Limits(rpm=1000, budget_usd=0.002, budget_period="day"))
        ).key
        for server in servers:
            assert server.runtime.keys is not None
            await server.runtime.keys.reload()
        await fresh_window()

        def post(i: int, key: str) -> Awaitable[Any]:
            return servers[i % 2].http.post(CHAT, json=body, headers={"authorization": f"Bearer {key}"})

        responses = await asyncio.gather(*(post(i, limited) for i in range(30)))
        assert sorted(r.status_code for r in responses) == [200] * 7 + [429] * 23
        assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in responses if r.status_code == 429)

        responses = await asyncio.gather(*(post(i, frugal) for i in range(30)))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert ok and refused and len(ok) + len(refused) == 30
        assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
        assert all("x-ratelimit-remaining-requests" in r.headers for r in ok)

        # One script per call on the wire, whichever limits apply.
        wire.clear()
        sequential = [await post(i, frugal) for i in range(4)]
        assert len([w for w in wire if ADMIT in w]) == len(sequential)
        assert all(w.count(b"EVALSHA") == 1 for w in wire if ADMIT in w)

        runtime = servers[0].runtime
        assert runtime.usage is not None and runtime.db is not None
        for server in servers:
            assert server.runtime.usage is not None
            await server.runtime.usage.flush()
        spent = await runtime.db.fetchone(
            "SELECT SUM(cost_usd) AS usd FROM usage WHERE team = ? AND status = 200", ("frugal",)
        )
        assert spent is not None and 0 < spent["usd"] <= 0.002
    finally:
        for server in servers:
            await server.http.aclose()
            await server.runtime.stop()
        await drop_schema(schema)
