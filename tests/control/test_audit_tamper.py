"""Tampering by someone who can write the database but not the signing key: rewriting records and
their chain, deleting checkpoints, cutting the tail. Each must make `verify` fail and say where."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.observe.audit import GENESIS, AuditEvent, AuditLog, Signer, link, verify
from meshgate.store import Database, migrate
from tests.store.test_database_contract import db, db_url  # noqa: F401 - both backends

SIGNER = Signer(b"test-secret")
FIELDS = ("seq", "ts", "event", "actor", "subject", "detail", "content")


def _hash(prev: str, row: dict[str, Any]) -> str:
    body = {k: row[k] for k in FIELDS}
    body["seq"], body["ts"] = int(body["seq"]), float(body["ts"])
    return link(prev, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


async def chained(database: Database, anchor: Any = None, count: int = 6) -> AuditLog:
    """Three batches of two records: checkpoints at 2, 4 and 6."""
    await migrate(database)
    log = AuditLog(database, SIGNER) if anchor is None else AuditLog(database, SIGNER, anchor)
    for i in range(0, count, 2):
        await log.record(
            AuditEvent("key.created", "cli", f"key_{i}", {"n": i}),
            AuditEvent("model.call", f"key_{i}", "bench", {"n": i + 1}),
        )
    return log


async def rewrite(database: Database, seq: int, detail: str) -> None:
    """Alter record `seq` and recompute the chain from there on, as someone without the key can."""
    rows = await database.fetchall("SELECT * FROM audit_log ORDER BY seq")
    prev = GENESIS
    for row in rows:
        if int(row["seq"]) >= seq:
            if int(row["seq"]) == seq:
                row["detail"] = detail
            new_hash = _hash(prev, row)
            await database.execute(
                "UPDATE audit_log SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (row["detail"], prev, new_hash, row["seq"]),
            )
            row["hash"] = new_hash
        prev = row["hash"]


def file_anchor(tmp_path: Path) -> Any:
    from meshgate.observe.audit_anchor import FileAnchor

    return FileAnchor(tmp_path / "audit-anchor.log")


# Rewriting: the database alone catches these.


async def test_rewrite_and_deleting_the_later_checkpoints_is_caught(db: Database) -> None:  # noqa: F811
    await chained(db)
    await rewrite(db, 3, '{"n":1000}')
    await db.execute("DELETE FROM audit_checkpoints WHERE seq >= 3")
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 3 and "not covered" in verdict.reason, verdict


async def test_rewrite_and_deleting_every_checkpoint_is_caught(db: Database) -> None:  # noqa: F811
    await chained(db)
    await rewrite(db, 3, '{"n":1000}')
    await db.execute("DELETE FROM audit_checkpoints")
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 1 and "no signed checkpoint" in verdict.reason, verdict


async def test_records_added_without_a_checkpoint_are_caught(db: Database) -> None:  # noqa: F811
    await chained(db)
    last = await db.fetchone("SELECT * FROM audit_log WHERE seq = 6")
    assert last is not None
    forged = {**last, "seq": 7, "detail": '{"n":7}'}
    await db.execute(
        "INSERT INTO audit_log (seq, ts, event, actor, subject, detail, content, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (7, forged["ts"], forged["event"], forged["actor"], forged["subject"], forged["detail"], None, last["hash"],
         _hash(str(last["hash"]), {**forged, "content": None})),
    )  # fmt: skip
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 7 and "records 7 to 7 are not covered" in verdict.reason, verdict


async def test_a_deleted_checkpoint_breaks_the_checkpoint_chain(db: Database) -> None:  # noqa: F811
    await chained(db)
    await db.execute("DELETE FROM audit_checkpoints WHERE seq = 4")
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and verdict.bad_seq == 6 and "does not follow the one at record 2" in verdict.reason


async def test_a_checkpoint_moved_to_another_record_is_caught(db: Database) -> None:  # noqa: F811
    """Re-pointing the last checkpoint at an earlier record (to hide a cut) breaks its signature."""
    await chained(db)
    await db.execute("DELETE FROM audit_log WHERE seq >= 5")
    await db.execute("DELETE FROM audit_checkpoints WHERE seq = 4")
    await db.execute("UPDATE audit_checkpoints SET seq = 4 WHERE seq = 6")
    verdict = await verify(db, SIGNER)
    assert not verdict.ok and "checkpoint" in verdict.reason


# Cutting the tail: only the anchor outside the database catches it.


async def test_an_untouched_log_verifies_against_its_anchor(db: Database, tmp_path: Path) -> None:  # noqa: F811
    anchor = file_anchor(tmp_path)
    await chained(db, anchor)
    verdict = await verify(db, SIGNER, [anchor])
    assert verdict.ok and verdict.checked == 6 and verdict.notes == ()


async def test_cut_tail_with_its_checkpoints_is_caught_by_the_anchor(db: Database, tmp_path: Path) -> None:  # noqa: F811
    anchor = file_anchor(tmp_path)
    await chained(db, anchor)
    await db.execute("DELETE FROM audit_log WHERE seq >= 5")
    await db.execute("DELETE FROM audit_checkpoints WHERE seq >= 5")
    assert (await verify(db, SIGNER)).ok  # consistent in itself: the database alone cannot tell
    verdict = await verify(db, SIGNER, [anchor])
    assert not verdict.ok and verdict.bad_seq == 5 and "removed" in verdict.reason and "to 6" in verdict.reason


async def test_everything_deleted_is_caught_by_the_anchor(db: Database, tmp_path: Path) -> None:  # noqa: F811
    anchor = file_anchor(tmp_path)
    await chained(db, anchor)
    await db.execute("DELETE FROM audit_log")
    await db.execute("DELETE FROM audit_checkpoints")
    verdict = await verify(db, SIGNER, [anchor])
    assert not verdict.ok and verdict.bad_seq == 1 and "removed" in verdict.reason


async def test_deleting_only_the_last_checkpoint_is_caught(db: Database, tmp_path: Path) -> None:  # noqa: F811
    anchor = file_anchor(tmp_path)
    await chained(db, anchor)
    await db.execute("DELETE FROM audit_checkpoints WHERE seq = 6")
    verdict = await verify(db, SIGNER, [anchor])
    assert not verdict.ok and verdict.bad_seq == 5 and "records 5 to 6 are not covered" in verdict.reason


async def test_an_edited_anchor_line_is_caught(db: Database, tmp_path: Path) -> None:  # noqa: F811
    anchor = file_anchor(tmp_path)
    await chained(db, anchor)
    lines = anchor.path.read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["seq"] = 60
    anchor.path.write_text("\n".join([*lines[:-1], json.dumps(entry)]) + "\n")
    verdict = await verify(db, SIGNER, [anchor])
    assert not verdict.ok and verdict.bad_seq == 60 and "bad signature" in verdict.reason


async def test_checkpoint_not_yet_anchored_is_reported_not_failed(db: Database, tmp_path: Path) -> None:  # noqa: F811
    """A crash between the commit and the anchor write leaves a checkpoint only in the database."""
    anchor = file_anchor(tmp_path)
    await chained(db, anchor)
    lines = anchor.path.read_text().splitlines()
    anchor.path.write_text("\n".join(lines[:-1]) + '\n{"seq": 6, "torn\n')
    verdict = await verify(db, SIGNER, [anchor])
    assert verdict.ok and verdict.checked == 6
    assert any("not in any anchor" in note for note in verdict.notes)
    assert any("unreadable" in note for note in verdict.notes)


async def test_anchor_file_is_private_and_one_line_per_checkpoint(db: Database, tmp_path: Path) -> None:  # noqa: F811
    anchor = file_anchor(tmp_path)
    await chained(db, anchor)
    assert stat.S_IMODE(os.stat(anchor.path).st_mode) == 0o600
    entries = [json.loads(line) for line in anchor.path.read_text().splitlines()]
    assert [(e["first"], e["seq"]) for e in entries] == [(1, 2), (3, 4), (5, 6)]
    assert entries[0]["prev"] == GENESIS and all(e["signature"] for e in entries)
    rows = await db.fetchall("SELECT hash FROM audit_log WHERE seq IN (2, 4, 6) ORDER BY seq")
    assert [e["head"] for e in entries] == [r["hash"] for r in rows]


async def test_unchained_checkpoints_from_before_the_upgrade_still_verify(db: Database, tmp_path: Path) -> None:  # noqa: F811
    await migrate(db)
    first = AuditEvent("team.created", "cli", "a", {})
    record_hash = link(GENESIS, json.dumps(
        {"seq": 1, "ts": 1.0, "event": first.event, "actor": "cli", "subject": "a", "detail": "{}", "content": None},
        sort_keys=True, separators=(",", ":")).encode())  # fmt: skip
    await db.execute(
        "INSERT INTO audit_log (seq, ts, event, actor, subject, detail, content, prev_hash, hash) "
        "VALUES (1, 1.0, 'team.created', 'cli', 'a', '{}', NULL, ?, ?)",
        (GENESIS, record_hash),
    )
    await db.execute(
        "INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (1, ?, 1.0, ?)",
        (record_hash, SIGNER.sign(1, record_hash)),
    )
    anchor = file_anchor(tmp_path)
    log = AuditLog(db, SIGNER, anchor)
    await log.record(AuditEvent("team.created", "cli", "b", {}))
    verdict = await verify(db, SIGNER, [anchor])
    assert verdict.ok and verdict.checked == 2 and any("predate" in note for note in verdict.notes)


def test_default_anchor_is_in_the_data_dir(tmp_path: Path, monkeypatch: Any) -> None:
    from meshgate.observe.audit_anchor import ANCHOR_ENV, FileAnchor, default_anchor

    monkeypatch.delenv(ANCHOR_ENV, raising=False)
    anchor = AuditLog(None, Signer.load(tmp_path)).anchor  # type: ignore[arg-type]
    assert isinstance(anchor, FileAnchor) and anchor.path == tmp_path / "audit-anchor.log"
    assert AuditLog(None, SIGNER).anchor is None  # type: ignore[arg-type]
    monkeypatch.setenv(ANCHOR_ENV, str(tmp_path / "elsewhere.log"))
    assert default_anchor(tmp_path).path == tmp_path / "elsewhere.log"  # type: ignore[union-attr]
    monkeypatch.setenv(ANCHOR_ENV, "off")
    assert default_anchor(tmp_path) is None


# The CLI: what an operator runs.


def _cli_log(tmp_path: Path) -> tuple[CliRunner, list[str]]:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    for team in ("a", "b", "c", "d"):
        assert runner.invoke(cli, ["teams", "create", team, *data]).exit_code == 0
    good = runner.invoke(cli, ["audit", "verify", *data])
    assert good.exit_code == 0 and "ok: 4 records" in good.output, good.output
    return runner, data


def _sql(tmp_path: Path, *statements: str) -> None:
    with sqlite3.connect(tmp_path / "meshgate.db") as conn:
        for statement in statements:
            conn.execute(statement)


def _rewrite_sync(tmp_path: Path, seq: int) -> None:
    with sqlite3.connect(tmp_path / "meshgate.db") as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY seq")]
        prev = GENESIS
        for row in rows:
            if row["seq"] >= seq:
                if row["seq"] == seq:
                    row["subject"] = "zz"
                row["hash"] = _hash(prev, row)
                conn.execute(
                    "UPDATE audit_log SET subject = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                    (row["subject"], prev, row["hash"], row["seq"]),
                )
            prev = row["hash"]


def _fails_at(runner: CliRunner, data: list[str], seq: int, word: str, *extra: str) -> None:
    bad = runner.invoke(cli, ["audit", "verify", *data, *extra])
    assert bad.exit_code == 1, bad.output
    assert f"TAMPERED at record {seq}:" in bad.output and word in bad.output, bad.output


def test_cli_catches_a_cut_tail(tmp_path: Path) -> None:
    runner, data = _cli_log(tmp_path)
    _sql(tmp_path, "DELETE FROM audit_log WHERE seq >= 3", "DELETE FROM audit_checkpoints WHERE seq >= 3")
    _fails_at(runner, data, 3, "removed")


def test_cli_catches_a_rewrite_with_the_later_checkpoints_deleted(tmp_path: Path) -> None:
    runner, data = _cli_log(tmp_path)
    _rewrite_sync(tmp_path, 2)
    _sql(tmp_path, "DELETE FROM audit_checkpoints WHERE seq >= 2")
    _fails_at(runner, data, 2, "not covered")


def test_cli_catches_a_rewrite_with_every_checkpoint_deleted(tmp_path: Path) -> None:
    runner, data = _cli_log(tmp_path)
    _rewrite_sync(tmp_path, 2)
    _sql(tmp_path, "DELETE FROM audit_checkpoints")
    _fails_at(runner, data, 1, "no signed checkpoint")


def test_cli_compares_with_a_remote_anchor_copy(tmp_path: Path) -> None:
    """The anchor shipped elsewhere (syslog, object store) and passed back with --anchor."""
    runner, data = _cli_log(tmp_path)
    remote = tmp_path / "remote-anchor.jsonl"
    local = tmp_path / "audit-anchor.log"
    remote.write_bytes(local.read_bytes())
    local.unlink()
    _sql(tmp_path, "DELETE FROM audit_log WHERE seq = 4", "DELETE FROM audit_checkpoints WHERE seq = 4")
    unanchored = runner.invoke(cli, ["audit", "verify", *data])
    assert unanchored.exit_code == 0 and "not in any anchor" in unanchored.output
    _fails_at(runner, data, 4, "remote-anchor.jsonl", "--anchor", str(remote))


def test_syslog_anchor_sends_each_checkpoint_as_one_datagram() -> None:
    import json as json_module
    import socket

    from meshgate.errors import ConfigError
    from meshgate.observe.audit_anchor import SyslogAnchor, parse_anchor

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        anchor = parse_anchor(f"syslog://127.0.0.1:{port}", None)
        assert isinstance(anchor, SyslogAnchor) and not anchor.readable
        anchor.write({"seq": 7, "head": "ab", "signature": "cd"})
        datagram = server.recv(65536).decode()
    # <PRI>: facility AUTHPRIV (10) * 8 + severity INFO (6) = 86
    assert datagram.startswith("<86>meshgate-audit: ")
    assert json_module.loads(datagram.split("meshgate-audit: ", 1)[1].rstrip("\x00")) == {
        "seq": 7,
        "head": "ab",
        "signature": "cd",
    }
    assert anchor.read() == ([], 0)
    with pytest.raises(ConfigError, match="is not syslog://host:port"):
        parse_anchor("syslog://nohost", None)
    assert parse_anchor("off", None) is None
