"""The audit chain: any altered, removed or reordered record is caught; replicas share one chain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.observe.audit import AuditEvent, AuditLog, Signer, _row_canonical, link, verify
from meshgate.observe.redact import redact_text
from meshgate.store import Database, migrate
from tests.conftest import AppClient, make_runtime, upstream_models_yaml
from tests.control.test_auth import HELLO, mesh, new_key, post  # noqa: F401 - the module fixture
from tests.store.test_database_contract import db, db_url  # noqa: F401 - both backends

SIGNER = Signer(b"test-secret")


async def chained(database: Database, count: int = 6) -> AuditLog:
    await migrate(database)
    log = AuditLog(database, SIGNER)
    for i in range(0, count, 2):
        await log.record(
            AuditEvent("key.created", "cli", f"key_{i}", {"n": i}),
            AuditEvent("model.call", f"key_{i}", "bench", {"n": i + 1}, content={"prompt": "hi"}),
        )
    return log


async def test_intact_chain_verifies(db: Database) -> None:  # noqa: F811
    await chained(db)
    verdict = await verify(db, SIGNER)
    assert verdict.ok and verdict.checked == 6


async def test_altered_record_is_named(db: Database) -> None:  # noqa: F811
    await chained(db)
    await db.execute("UPDATE audit_log SET detail = ? WHERE seq = 4", ('{"n":99}',))
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 4 and "altered" in verdict.reason and verdict.checked == 3


async def test_removed_record_is_named(db: Database) -> None:  # noqa: F811
    await chained(db)
    await db.execute("DELETE FROM audit_log WHERE seq = 3")
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 3 and "missing" in verdict.reason


async def test_reordered_records_are_caught(db: Database) -> None:  # noqa: F811
    await chained(db)
    await db.execute("UPDATE audit_log SET seq = 100 WHERE seq = 2")
    await db.execute("UPDATE audit_log SET seq = 2 WHERE seq = 3")
    await db.execute("UPDATE audit_log SET seq = 3 WHERE seq = 100")
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 2


async def test_truncated_tail_is_caught_by_the_signed_checkpoint(db: Database) -> None:  # noqa: F811
    await chained(db)
    await db.execute("DELETE FROM audit_log WHERE seq >= 5")
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 5 and "removed" in verdict.reason


async def test_rewritten_chain_is_caught_without_the_secret(db: Database) -> None:  # noqa: F811
    """Alter record 3 and recompute every hash after it: the chain holds, the signatures do not."""
    await chained(db)
    rows = await db.fetchall("SELECT * FROM audit_log ORDER BY seq")
    prev = rows[1]["hash"]
    for row in rows[2:]:
        if row["seq"] == 3:
            row["detail"] = '{"n":1000}'
        new_hash = link(prev, _row_canonical(row))
        await db.execute(
            "UPDATE audit_log SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (row["detail"], prev, new_hash, row["seq"]),
        )
        prev = new_hash
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 4 and "checkpoint" in verdict.reason


async def test_a_different_secret_fails_the_signatures(db: Database) -> None:  # noqa: F811
    await chained(db)
    verdict = await verify(db, Signer(b"another"))
    assert not verdict.ok and "signature" in verdict.reason


async def test_two_replicas_extend_one_chain(db_url: str) -> None:  # noqa: F811
    from meshgate.store import connect

    one, two = await connect(db_url), await connect(db_url)
    try:
        await migrate(one)
        logs = [AuditLog(one, SIGNER), AuditLog(two, SIGNER)]
        await asyncio.gather(*(logs[i % 2].record(AuditEvent("model.call", "k", "m", {"i": i})) for i in range(30)))
        verdict = await verify(one, SIGNER)
        assert verdict.ok and verdict.checked == 30
    finally:
        await one.close()
        await two.close()


async def test_model_calls_and_key_changes_are_audited(mesh: AppClient) -> None:  # noqa: F811
    key = await new_key(mesh, team="audited")
    ok = await post(mesh, key)
    refused = await post(mesh, key, {**HELLO, "model": "fail400"})
    runtime = mesh.runtime
    assert runtime.audit_writer is not None and runtime.db is not None and runtime.audit is not None
    await runtime.audit_writer.flush()
    rows = {r["detail"]: r for r in await runtime.db.fetchall("SELECT * FROM audit_log WHERE event = 'model.call'")}
    calls = {json.loads(d)["request_id"]: (r, json.loads(d)) for d, r in rows.items()}
    row, detail = calls[ok.headers["x-request-id"]]
    assert row["subject"] == "bench" and row["actor"].startswith("key_") and row["content"] is None
    assert detail["decision"] == "allowed" and detail["team"] == "audited"
    assert detail["policies"] == [
        "metrics",
        "authorize-model",
        "data-class",
        "check-capabilities",
        "rate-limit",
        "budget",
        "knowledge",
        "guards",
    ]
    assert calls[refused.headers["x-request-id"]][1]["error"] == "invalid_request"
    created = await runtime.db.fetchall("SELECT * FROM audit_log WHERE event = 'key.created' AND actor = 'system'")
    assert any(json.loads(r["detail"])["team"] == "audited" for r in created)
    assert mesh.key not in json.dumps(created) and key not in json.dumps(created)
    assert (await verify(runtime.db, runtime.audit.signer)).ok


async def test_rate_limit_refusal_names_the_policy(mesh: AppClient) -> None:  # noqa: F811
    from meshgate.control.records import Limits
    from tests.control.test_ratelimit import fresh_window

    await fresh_window()
    key = await new_key(mesh, limits=Limits(rpm=1))
    await post(mesh, key)
    response = await post(mesh, key)
    assert response.status_code == 429
    assert mesh.runtime.audit_writer is not None and mesh.runtime.db is not None
    await mesh.runtime.audit_writer.flush()
    rows = await mesh.runtime.db.fetchall("SELECT detail FROM audit_log WHERE event = 'model.call'")
    detail = next(json.loads(r["detail"]) for r in rows if response.headers["x-request-id"] in r["detail"])
    assert detail["decision"] == "refused" and detail["policies"][-1] == "rate-limit"


@pytest.mark.parametrize("policy", ["full", "redacted"])
async def test_content_policy(tmp_path: Path, fake_upstream, policy: str) -> None:  # type: ignore[no-untyped-def]
    runtime = make_runtime(tmp_path, upstream_models_yaml(fake_upstream.base_url), audit_content=policy)
    client = await AppClient.started(runtime)
    try:
        message = "write to jane.doe@example.com please"
        body = {"model": "bench", "messages": [{"role": "user", "content": message}]}
        await client.http.post("/v1/chat/completions", json=body)
        await client.http.post("/v1/chat/completions", json={**body, "stream": True})
        assert runtime.audit_writer is not None and runtime.db is not None
        await runtime.audit_writer.flush()
        rows = await runtime.db.fetchall("SELECT content FROM audit_log WHERE event = 'model.call'")
        contents = [json.loads(r["content"]) for r in rows]
        assert len(contents) == 2
        for content in contents:
            assert content["prompt"][0]["role"] == "user"
            if policy == "full":
                assert content["prompt"][0]["content"] == message
                assert content["response"] == f"echo: {message}"
            else:
                assert "jane.doe@example.com" not in json.dumps(content)
                assert "[EMAIL]" in content["prompt"][0]["content"] and "[EMAIL]" in content["response"]
    finally:
        await client.http.aclose()
        await runtime.stop()


def test_redaction_patterns() -> None:
    text = "mail a@b.io, call +41 44 668 18 00, card 4111 1111 1111 1111, key sk-abcdefghijklmnopqrstuv"
    redacted = redact_text(text)
    for secret in ("a@b.io", "668 18 00", "4111", "sk-abcdef"):
        assert secret not in redacted
    assert redact_text("nothing to hide here") == "nothing to hide here"


def test_cli_verify_names_the_bad_record(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    for team in ("a", "b", "c"):
        assert runner.invoke(cli, ["teams", "create", team, *data]).exit_code == 0
    good = runner.invoke(cli, ["audit", "verify", *data])
    assert good.exit_code == 0 and "ok: 3 records" in good.output
    exported = runner.invoke(cli, ["audit", "export", *data])
    lines = [json.loads(line) for line in exported.output.splitlines() if line.startswith("{")]
    assert [r["subject"] for r in lines] == ["a", "b", "c"] and lines[0]["event"] == "team.created"
    import sqlite3

    with sqlite3.connect(tmp_path / "meshgate.db") as conn:
        conn.execute("UPDATE audit_log SET subject = 'z' WHERE seq = 2")
    bad = runner.invoke(cli, ["audit", "verify", *data])
    assert bad.exit_code == 1 and "record 2" in bad.output
