"""The audit log: append-only, each record chained to its predecessor by SHA-256, each batch closed by
a checkpoint signed with a server secret kept outside the database (HMAC-SHA256), each checkpoint
chained to the one before it, and every checkpoint also appended to an anchor outside the database.

    hash(n) = SHA-256(hash(n-1) || canonical JSON of record n)
    checkpoint = {seq, first, head: hash(seq), prev: digest of the previous checkpoint, ts} + HMAC

Altering, removing or reordering a record breaks the chain at that record. Someone who can write
the database but not the secret and rewrites the chain from there on cannot sign new checkpoints:
the old ones no longer match, and deleting them leaves records that no checkpoint covers (every
append writes its checkpoint in the same transaction, so a healthy log has none) or a gap in the
checkpoint chain. Cutting the tail together with its checkpoints leaves a consistent but shorter
log: the anchor (audit_anchor.py) still holds the later checkpoints. See docs/audit-threat-model.md.

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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meshgate.observe.audit_anchor import Anchor, default_anchor, write_all
from meshgate.store import BatchWriter, Database, Queries

GENESIS = "0" * 64
CONTENT_POLICIES = ("off", "redacted", "full")
SECRET_ENV = "MESHGATE_AUDIT_SECRET"

INSERT_AUDIT = (
    "INSERT INTO audit_log (seq, ts, event, actor, subject, detail, content, content_sha256, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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


def content_digest(content: str | None) -> str | None:
    return None if content is None else hashlib.sha256(content.encode()).hexdigest()


def _body(
    seq: int, ts: float, event: str, actor: str, subject: str, detail: str, content: str | None, digest: str | None
) -> bytes:
    """The chained form of a record. Since migration 0011 the chain covers the sha256 of the
    content, not the content: erasure (`meshgate erase`) may blank the content and every hash still
    holds. Records written before keep their old form (content itself, no digest)."""
    body: dict[str, Any] = {"seq": seq, "ts": ts, "event": event, "actor": actor, "subject": subject, "detail": detail}
    if digest is not None:
        body["content_sha256"] = digest
    else:
        body["content"] = content
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _canonical(seq: int, ts: float, event: AuditEvent, detail: str, content: str | None) -> bytes:
    return _body(seq, ts, event.event, event.actor, event.subject, detail, content, content_digest(content))


def _row_canonical(row: dict[str, Any]) -> bytes:
    return _body(
        int(row["seq"]),
        float(row["ts"]),
        row["event"],
        row["actor"],
        row["subject"],
        row["detail"],
        row["content"],
        row.get("content_sha256"),
    )


def link(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


class Signer:
    """HMAC-SHA256 with the server secret: `MESHGATE_AUDIT_SECRET`, else `<data dir>/audit.key`
    (made on first use, mode 0600). Replicas sharing a database must share the secret. `home` is
    the data dir it was loaded from: the default anchor lives there."""

    def __init__(self, secret: bytes, home: Path | None = None) -> None:
        self._secret = secret
        self.home = home

    @classmethod
    def load(cls, data_dir: Path) -> Signer:
        from_env = os.environ.get(SECRET_ENV)
        if from_env:
            return cls(from_env.encode(), data_dir)
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
        return cls(path.read_text().strip().encode(), data_dir)

    def sign(self, seq: int, record_hash: str) -> str:
        """The signature of an unchained (pre-0005) checkpoint: still checked, no longer written."""
        return hmac.new(self._secret, f"{seq}:{record_hash}".encode(), hashlib.sha256).hexdigest()

    def check(self, seq: int, record_hash: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(seq, record_hash), signature)

    def sign_body(self, body: bytes) -> str:
        return hmac.new(self._secret, b"meshgate-audit-checkpoint:" + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "records `first`..`seq` end in hash `head`", chained to the checkpoint
    before it by `prev` (its digest). `prev is None` marks an unchained checkpoint from before 0005."""

    seq: int
    head: str
    ts: float
    signature: str
    first: int | None = None
    prev: str | None = None

    @property
    def chained(self) -> bool:
        return self.prev is not None

    def body(self) -> bytes:
        fields = {"v": 2, "seq": self.seq, "first": self.first, "head": self.head, "prev": self.prev, "ts": self.ts}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        if not self.chained:
            return hashlib.sha256(f"v1:{self.seq}:{self.head}:{self.signature}".encode()).hexdigest()
        return hashlib.sha256(self.body()).hexdigest()

    def signed_by(self, signer: Signer) -> bool:
        if not self.chained:
            return signer.check(self.seq, self.head, self.signature)
        return hmac.compare_digest(signer.sign_body(self.body()), self.signature)

    def entry(self) -> dict[str, Any]:
        """The anchor line."""
        return {
            "v": 2,
            "seq": self.seq,
            "first": self.first,
            "head": self.head,
            "prev": self.prev,
            "ts": self.ts,
            "signature": self.signature,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Checkpoint:
        first = row.get("first_seq")
        prev = row.get("prev_checkpoint")
        return cls(
            seq=int(row["seq"]),
            head=str(row["hash"]),
            ts=float(row["ts"]),
            signature=str(row["signature"]),
            first=None if first is None else int(first),
            prev=None if prev is None else str(prev),
        )

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Checkpoint:
        """An anchor line; raises KeyError, TypeError or ValueError when it is not one."""
        if entry.get("v") != 2 or not isinstance(entry["prev"], str):
            raise ValueError("not a chained checkpoint")
        return cls(
            seq=int(entry["seq"]),
            head=str(entry["head"]),
            ts=float(entry["ts"]),
            signature=str(entry["signature"]),
            first=int(entry["first"]),
            prev=entry["prev"],
        )


async def append_checkpointed(tx: Queries, events: list[AuditEvent], signer: Signer) -> Checkpoint | None:
    """Chain `events` after the last record and sign a checkpoint at the new tail, chained to the
    previous checkpoint. Call inside `db.exclusive("audit")`. None when there is nothing to append."""
    if not events:
        return None
    last = await tx.fetchone("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS)
    latest = await tx.fetchone("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
    first = seq + 1
    rows = []
    for event in events:
        seq += 1
        ts = event.ts or time.time()
        detail = json.dumps(event.detail, sort_keys=True, separators=(",", ":"))
        content = None if event.content is None else json.dumps(event.content, sort_keys=True, separators=(",", ":"))
        record_hash = link(prev, _canonical(seq, ts, event, detail, content))
        rows.append(
            (
                seq,
                ts,
                event.event,
                event.actor,
                event.subject,
                detail,
                content,
                content_digest(content),
                prev,
                record_hash,
            )
        )
        prev = record_hash
    await tx.executemany(INSERT_AUDIT, rows)
    unsigned = Checkpoint(
        seq=seq,
        head=prev,
        ts=time.time(),
        signature="",
        first=first,
        prev=Checkpoint.from_row(latest).digest() if latest else GENESIS,
    )
    checkpoint = replace(unsigned, signature=signer.sign_body(unsigned.body()))
    await tx.execute(
        "INSERT INTO audit_checkpoints (seq, hash, ts, signature, first_seq, prev_checkpoint) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (checkpoint.seq, checkpoint.head, checkpoint.ts, checkpoint.signature, checkpoint.first, checkpoint.prev),
    )
    return checkpoint


async def append(tx: Queries, events: list[AuditEvent], signer: Signer) -> int:
    """`append_checkpointed`, returning the last sequence number."""
    checkpoint = await append_checkpointed(tx, events, signer)
    if checkpoint is not None:
        return checkpoint.seq
    last = await tx.fetchone("SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1")
    return int(last["seq"]) if last else 0


_DEFAULT_ANCHOR: Any = object()


class AuditLog:
    """Appends events now (low-volume changes) or hands them to a batch writer (model calls); each
    committed checkpoint is then appended to the anchor (by default `<data dir>/audit-anchor.log`
    when the signer was loaded from a data dir, see `default_anchor`)."""

    def __init__(self, db: Database, signer: Signer, anchor: Anchor | None = _DEFAULT_ANCHOR) -> None:
        self.db = db
        self.signer = signer
        self.anchor: Anchor | None = default_anchor(signer.home) if anchor is _DEFAULT_ANCHOR else anchor

    async def record(self, *events: AuditEvent) -> None:
        async with self.db.exclusive("audit") as tx:
            checkpoint = await append_checkpointed(tx, list(events), self.signer)
        # After the commit: an anchored checkpoint is always in the database too (a crash in between
        # leaves a checkpoint that is only in the database, which `verify` reports, not fails).
        if checkpoint is not None and self.anchor is not None:
            write_all([self.anchor], checkpoint.entry())


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
    #: What holds but is worth knowing: no anchor, checkpoints not anchored yet, unreadable lines.
    notes: tuple[str, ...] = ()


async def _rows(db: Database, page: int = 5000) -> AsyncIterator[dict[str, Any]]:
    after = 0
    while True:
        rows = await db.fetchall("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, page))
        if not rows:
            return
        for row in rows:
            yield row
        after = int(rows[-1]["seq"])


def _check_checkpoint_chain(checkpoints: list[Checkpoint], signer: Signer) -> tuple[int, str] | None:
    """The first checkpoint that is not signed or does not follow the one before it."""
    before: Checkpoint | None = None
    for checkpoint in checkpoints:
        seq = checkpoint.seq
        if not checkpoint.signed_by(signer):
            return seq, f"the checkpoint at record {seq} has a bad signature"
        if checkpoint.chained:
            if checkpoint.prev != (before.digest() if before is not None else GENESIS):
                after = f"the one at record {before.seq}" if before is not None else "the start of the log"
                return seq, f"the checkpoint at record {seq} does not follow {after} (a checkpoint was removed)"
            expected_first = before.seq + 1 if before is not None else 1
            if checkpoint.first != expected_first:
                return seq, f"the checkpoint at record {seq} covers from {checkpoint.first}, not {expected_first}"
        elif before is not None and before.chained:
            return seq, f"the checkpoint at record {seq} is unchained after chained ones (forged or replayed)"
        before = checkpoint
    return None


async def verify(db: Database, signer: Signer, anchors: Sequence[Anchor] = ()) -> Verdict:
    """Walk the checkpoint chain, the record chain and the anchors; name the first record that does
    not hold. Fails on: a bad signature, a gap in the checkpoint chain, a record altered, removed or
    reordered, a record that differs from its checkpoint, records after the last checkpoint (or
    records and no checkpoint at all), a checkpoint past the last record, and a checkpoint in an
    anchor that the database lacks or holds differently (a cut-off tail, a rewritten chain)."""
    checkpoints = [Checkpoint.from_row(r) for r in await db.fetchall("SELECT * FROM audit_checkpoints ORDER BY seq")]
    broken = _check_checkpoint_chain(checkpoints, signer)
    if broken is not None:
        return Verdict(False, 0, broken[0], broken[1])
    by_seq = {c.seq: c for c in checkpoints}
    expected, prev, checked = 1, GENESIS, 0
    async for row in _rows(db):
        seq = int(row["seq"])
        if seq != expected:
            return Verdict(False, checked, expected, f"record {expected} is missing (next is {seq})")
        if row["prev_hash"] != prev:
            return Verdict(False, checked, seq, f"record {seq} does not follow record {seq - 1} (removed or reordered)")
        digest = row.get("content_sha256")
        if link(prev, _row_canonical(row)) != row["hash"] or (
            digest is not None and row["content"] is not None and content_digest(row["content"]) != digest
        ):
            return Verdict(False, checked, seq, f"record {seq} was altered (its hash does not match its content)")
        checkpoint = by_seq.get(seq)
        if checkpoint is not None and checkpoint.head != row["hash"]:
            return Verdict(False, checked, seq, f"record {seq} differs from its signed checkpoint (chain rewritten)")
        prev, expected, checked = str(row["hash"]), seq + 1, checked + 1
    last = expected - 1
    beyond = [s for s in by_seq if s > last]
    if beyond:
        return Verdict(
            False,
            checked,
            expected,
            f"records from {expected} to {max(beyond)} were removed (signed up to {max(beyond)})",
        )
    covered = checkpoints[-1].seq if checkpoints else 0
    if covered < last:
        if not checkpoints:
            reason = f"no signed checkpoint exists for records 1 to {last} (checkpoints deleted)"
        else:
            reason = (
                f"records {covered + 1} to {last} are not covered by a signed checkpoint "
                f"(checkpoints deleted or records added without the secret; signed up to {covered})"
            )
        return Verdict(False, covered, covered + 1, reason)
    notes: list[str] = []
    if any(not c.chained for c in checkpoints):
        notes.append(f"{sum(not c.chained for c in checkpoints)} checkpoints predate chained checkpoints")
    if not anchors:
        notes.append("no anchor: a tail cut off together with its checkpoints cannot be detected")
    anchored = 0
    for anchor in anchors:
        if not getattr(anchor, "readable", True):
            notes.append(f"{anchor.name} is write-only: compare an export of it with --anchor FILE")
            continue
        entries, unreadable = anchor.read()
        for entry in sorted(entries, key=lambda e: int(e["seq"])):
            try:
                theirs = Checkpoint.from_entry(entry)
            except (KeyError, TypeError, ValueError):
                unreadable += 1
                continue
            seq = theirs.seq
            if not theirs.signed_by(signer):
                return Verdict(
                    False, checked, seq, f"anchor {anchor.name}: the checkpoint at record {seq} has a bad signature"
                )
            if seq > last:
                return Verdict(
                    False,
                    checked,
                    last + 1,
                    f"records from {last + 1} to {seq} were removed with their checkpoints "
                    f"(anchor {anchor.name} holds a signed checkpoint at record {seq})",
                )
            ours = by_seq.get(seq)
            if ours is None:
                return Verdict(
                    False,
                    checked,
                    seq,
                    f"the signed checkpoint at record {seq} is missing from the database "
                    f"(anchor {anchor.name} holds it; chain rewritten or checkpoint deleted)",
                )
            if ours.digest() != theirs.digest() or ours.signature != theirs.signature:
                return Verdict(
                    False,
                    checked,
                    seq,
                    f"the checkpoint at record {seq} differs from the one in anchor {anchor.name} (chain rewritten)",
                )
            anchored = max(anchored, seq)
        if unreadable:
            notes.append(f"anchor {anchor.name}: {unreadable} unreadable entries skipped")
    if anchors:
        pending = [c for c in checkpoints if c.chained and c.seq > anchored]
        if pending:
            notes.append(
                f"{len(pending)} checkpoints after record {anchored} are not in any anchor "
                f"(records {anchored + 1} to {last} are checked against the database's signatures only)"
            )
    return Verdict(True, checked, notes=tuple(notes))


async def export(db: Database, since: float | None = None) -> AsyncIterator[dict[str, Any]]:
    async for row in _rows(db):
        if since is None or float(row["ts"]) >= since:
            yield {
                **row,
                "detail": json.loads(row["detail"]),
                "content": None if row["content"] is None else json.loads(row["content"]),
            }
