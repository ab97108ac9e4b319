"""The audit log: append-only, each record chained to its predecessor by SHA-256, with checkpoints
signed by a server secret (HMAC-SHA256).

    hash(n) = SHA-256(hash(n-1) || canonical JSON of record n)

Altering, removing or reordering a record breaks the chain at that record. Someone who rewrites
the chain from there on cannot sign new checkpoints without the secret, so the signed checkpoints
catch that too, and a truncated tail shows as a checkpoint past the last record.

Records are appended in a transaction that holds the `audit` lock, so replicas sharing one
database extend one chain. Model calls are audited in batches off the request path; changes to
keys and teams are appended as they happen.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshgate.store import BatchWriter, Database, Queries

GENESIS = "0" * 64
CONTENT_POLICIES = ("off", "redacted", "full")
SECRET_ENV = "MESHGATE_AUDIT_SECRET"

INSERT_AUDIT = (
    "INSERT INTO audit_log (seq, ts, event, actor, subject, detail, content, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class AuditEvent:
    event: str  # "model.call", "key.created", "team.updated", "server.started", ...
    actor: str  # a key id, "cli" or "system"
    subject: str  # what it is about: a model, a key, a team
    detail: dict[str, Any]
    content: dict[str, Any] | None = None
    ts: float = 0.0

    def row(self) -> tuple[object, ...]:
        """Unused: AuditWriter.write chains whole events (seq and hashes are known only then)."""
        return ()


def _canonical(seq: int, ts: float, event: AuditEvent, detail: str, content: str | None) -> bytes:
    body = {
        "seq": seq,
        "ts": ts,
        "event": event.event,
        "actor": event.actor,
        "subject": event.subject,
        "detail": detail,
        "content": content,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _row_canonical(row: dict[str, Any]) -> bytes:
    body = {
        "seq": int(row["seq"]),
        "ts": float(row["ts"]),
        "event": row["event"],
        "actor": row["actor"],
        "subject": row["subject"],
        "detail": row["detail"],
        "content": row["content"],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def link(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


class Signer:
    """HMAC-SHA256 with the server secret: `MESHGATE_AUDIT_SECRET`, else `<data dir>/audit.key`
    (made on first use, mode 0600). Replicas sharing a database must share the secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def load(cls, data_dir: Path) -> Signer:
        from_env = os.environ.get(SECRET_ENV)
        if from_env:
            return cls(from_env.encode())
        path = data_dir / "audit.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            # Written whole under a temporary name, then linked into place: a second process (another
            # worker) either wins the link or reads the complete file, never a half-written one.
            draft = data_dir / f".audit.key.{os.getpid()}.{secrets.token_hex(4)}"
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        return cls(path.read_text().strip().encode())

    def sign(self, seq: int, record_hash: str) -> str:
        return hmac.new(self._secret, f"{seq}:{record_hash}".encode(), hashlib.sha256).hexdigest()

    def check(self, seq: int, record_hash: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(seq, record_hash), signature)


async def append(tx: Queries, events: list[AuditEvent], signer: Signer) -> int:
    """Chain `events` after the last record and sign a checkpoint at the new tail. Call inside
    `db.exclusive("audit")`. Returns the last sequence number."""
    last = await tx.fetchone("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS)
    rows = []
    for event in events:
        seq += 1
        ts = event.ts or time.time()
        detail = json.dumps(event.detail, sort_keys=True, separators=(",", ":"))
        content = None if event.content is None else json.dumps(event.content, sort_keys=True, separators=(",", ":"))
        record_hash = link(prev, _canonical(seq, ts, event, detail, content))
        rows.append((seq, ts, event.event, event.actor, event.subject, detail, content, prev, record_hash))
        prev = record_hash
    await tx.executemany(INSERT_AUDIT, rows)
    await tx.execute(
        "INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)",
        (seq, prev, time.time(), signer.sign(seq, prev)),
    )
    return seq


class AuditLog:
    """Appends events now (low-volume changes) or hands them to a batch writer (model calls)."""

    def __init__(self, db: Database, signer: Signer) -> None:
        self.db = db
        self.signer = signer

    async def record(self, *events: AuditEvent) -> None:
        async with self.db.exclusive("audit") as tx:
            await append(tx, list(events), self.signer)


class AuditWriter(BatchWriter):
    """The batch writer for audit events: each batch extends the chain under the audit lock."""

    def __init__(self, log: AuditLog, **options: Any) -> None:
        super().__init__(log.db, INSERT_AUDIT, name="audit", **options)
        self.log = log

    async def write(self, batch: list[Any]) -> None:
        await self.log.record(*batch)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    bad_seq: int | None = None
    reason: str = ""


async def _rows(db: Database, page: int = 5000) -> AsyncIterator[dict[str, Any]]:
    after = 0
    while True:
        rows = await db.fetchall("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, page))
        if not rows:
            return
        for row in rows:
            yield row
        after = int(rows[-1]["seq"])


async def verify(db: Database, signer: Signer) -> Verdict:
    """Walk the chain and the checkpoints; name the first record that does not hold."""
    checkpoints = {int(r["seq"]): r for r in await db.fetchall("SELECT * FROM audit_checkpoints ORDER BY seq")}
    expected, prev, checked = 1, GENESIS, 0
    async for row in _rows(db):
        seq = int(row["seq"])
        if seq != expected:
            return Verdict(False, checked, expected, f"record {expected} is missing (next is {seq})")
        if row["prev_hash"] != prev:
            return Verdict(False, checked, seq, f"record {seq} does not follow record {seq - 1} (removed or reordered)")
        if link(prev, _row_canonical(row)) != row["hash"]:
            return Verdict(False, checked, seq, f"record {seq} was altered (its hash does not match its content)")
        checkpoint = checkpoints.get(seq)
        if checkpoint is not None:
            if not signer.check(seq, str(checkpoint["hash"]), str(checkpoint["signature"])):
                return Verdict(False, checked, seq, f"the checkpoint at record {seq} has a bad signature")
            if checkpoint["hash"] != row["hash"]:
                return Verdict(
                    False, checked, seq, f"record {seq} differs from its signed checkpoint (chain rewritten)"
                )
        prev, expected, checked = str(row["hash"]), seq + 1, checked + 1
    beyond = [s for s in checkpoints if s >= expected]
    if beyond:
        return Verdict(
            False,
            checked,
            expected,
            f"records from {expected} to {max(beyond)} were removed (signed up to {max(beyond)})",
        )
    return Verdict(True, checked)


async def export(db: Database, since: float | None = None) -> AsyncIterator[dict[str, Any]]:
    async for row in _rows(db):
        if since is None or float(row["ts"]) >= since:
            yield {
                **row,
                "detail": json.loads(row["detail"]),
                "content": None if row["content"] is None else json.loads(row["content"]),
            }
