"""The human review queue: calls a guard held (`action: review`) wait here for a reviewer, and
flagged calls sampled for after-the-fact labelling are kept here with their label.

Statuses: a held call is `pending` until a reviewer approves or rejects it (once: a second decision
is a 409); a sampled `flag` item is `sampled` and takes a label instead of a decision. Findings are
kept as kinds, detectors and counts only, never the matched values. The held request (and, for
answers held on output, the held completion) is kept so that an approved call can be released.

Decisions, labels and releases go to the audit log (reviewer, review id, guard; never content).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import re
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshgate.errors import InvalidRequest, MeshError
from meshgate.guards.findings import Direction, Finding
from meshgate.observe.audit import AuditEvent, AuditLog
from meshgate.store import Database

REVIEW_ID_PREFIX = "rev_"
HELD_STATUSES = ("pending", "approved", "rejected")
STATUSES = (*HELD_STATUSES, "sampled")
#: Labels reviewers commonly use; any short lowercase word is accepted (evaluation reads them).
SUGGESTED_LABELS = ("correct", "false_positive", "harmful", "leak", "injection", "pii", "other")
#: A label is a short word, never free text: it is audited and must not be able to carry content.
LABEL_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
NOTE_MAX = 2000
LIST_MAX = 500

#: What releases an approved call held on input: runs its request and returns the completion.
Release = Callable[["Review"], Awaitable[dict[str, Any]]]


class ReviewNotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    default_code = "review_not_found"
    kind = "not_found"

    def __init__(self, review_id: str) -> None:
        shown = review_id if len(review_id) <= 64 else review_id[:64] + "…"
        super().__init__(f"No review with id {shown!r}.", param="review_id")


class ReviewConflict(MeshError):
    """The item is not in a state that allows this (already decided; a sample asked for a decision)."""

    status = 409
    type = "invalid_request_error"
    default_code = "review_conflict"
    kind = "conflict"


def new_review_id() -> str:
    return REVIEW_ID_PREFIX + secrets.token_urlsafe(18)  # 18 bytes -> 24 url-safe characters


def check_label(label: str | None) -> str | None:
    if label is None:
        return None
    if not LABEL_PATTERN.match(label):
        raise InvalidRequest(
            "label must be a short lowercase word (letters, digits, _ . -; at most 40), e.g. "
            + ", ".join(SUGGESTED_LABELS),
            param="label",
            code="invalid_value",
        )
    return label


def check_note(note: str | None) -> str | None:
    if note is not None and len(note) > NOTE_MAX:
        raise InvalidRequest(f"note is longer than {NOTE_MAX} characters", param="note", code="invalid_value")
    return note


def check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status", code="invalid_value")
    return status


def summarize_findings(findings: Iterable[Finding | Mapping[str, Any]]) -> builtins.list[dict[str, Any]]:
    """Findings reduced to `{"kind", "detector", "count"}` per kind and detector: never offsets or values.
    Takes Finding objects or already counted mappings (extra keys are dropped)."""
    counts: dict[tuple[str, str], int] = {}
    for finding in findings:
        if isinstance(finding, Finding):
            key, count = (finding.kind, finding.detector), 1
        else:
            key = (str(finding.get("kind", ""))[:64], str(finding.get("detector", ""))[:64])
            count = int(finding.get("count", 1))
        counts[key] = counts.get(key, 0) + count
    return [{"kind": k, "detector": d, "count": n} for (k, d), n in sorted(counts.items())]


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _loads(text: Any) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True, slots=True)
class Review:
    id: str
    created: float
    status: str  # pending | approved | rejected (held calls); sampled (flag samples)
    direction: str  # input | output
    guard: str  # the name of the policy that held or flagged the call
    model: str
    key_id: str | None
    team: str | None
    request_id: str | None
    findings: list[dict[str, Any]]
    request: dict[str, Any] | None
    response: dict[str, Any] | None
    stream: bool
    decided_by: str | None = None
    decided_at: float | None = None
    label: str | None = None
    note: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Review:
        decided_at = row["decided_at"]
        return cls(
            id=str(row["id"]),
            created=float(row["created"]),
            status=str(row["status"]),
            direction=str(row["direction"]),
            guard=str(row["guard"]),
            model=str(row["model"]),
            key_id=row["key_id"],
            team=row["team"],
            request_id=row["request_id"],
            findings=_loads(row["findings"]) or [],
            request=_loads(row["request"]),
            response=_loads(row["response"]),
            stream=bool(row["stream"]),
            decided_by=row["decided_by"],
            decided_at=None if decided_at is None else float(decided_at),
            label=row["label"],
            note=row["note"],
        )

    @property
    def released(self) -> bool:
        """Approved and its answer is stored: the client can fetch it."""
        return self.status == "approved" and self.response is not None

    def summary(self) -> dict[str, Any]:
        """What a list shows: everything but the request and the response (the content)."""
        return {
            "object": "review",
            "id": self.id,
            "created": self.created,
            "status": self.status,
            "direction": self.direction,
            "guard": self.guard,
            "model": self.model,
            "key_id": self.key_id,
            "team": self.team,
            "request_id": self.request_id,
            "findings": self.findings,
            "stream": self.stream,
            "released": self.released,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "label": self.label,
            "note": self.note,
        }

    def full(self) -> dict[str, Any]:
        """What a reviewer opens: the summary with the held request and response."""
        return {**self.summary(), "request": self.request, "response": self.response}

    def audit_detail(self) -> dict[str, Any]:
        """What the audit log keeps of an item: never its request, response or note."""
        return {
            "review_id": self.id,
            "status": self.status,
            "direction": self.direction,
            "guard": self.guard,
            "model": self.model,
            "key_id": self.key_id,
            "team": self.team,
            "request_id": self.request_id,
            "label": self.label,
            "findings": self.findings,
        }


_COLUMNS = (
    "id, created, status, direction, guard, model, key_id, team, request_id, findings, request, response, "
    "stream, decided_by, decided_at, label, note"
)


class ReviewStore:
    """The queue on the gateway's database. One per process (it holds the release locks): the
    runtime builds it once and the pipeline step, the routes and the CLI share it."""

    def __init__(self, db: Database, audit: AuditLog | None = None) -> None:
        self.db = db
        self.audit = audit
        # One lock per item being released, gone once nobody holds it.
        self._releasing: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def _audit(self, event: str, actor: str, review: Review, **extra: Any) -> None:
        if self.audit is not None:
            await self.audit.record(AuditEvent(event, actor, review.id, {**review.audit_detail(), **extra}))

    async def submit(
        self,
        *,
        direction: Direction,
        guard: str,
        model: str,
        findings: Iterable[Finding | Mapping[str, Any]],
        request: Mapping[str, Any] | None,
        response: Mapping[str, Any] | None = None,
        stream: bool = False,
        key_id: str | None = None,
        team: str | None = None,
        request_id: str | None = None,
        status: str = "pending",
    ) -> Review:
        """Queue a held call (`pending`), or with `status="sampled"` a flagged call for labelling.
        `request` is the chat request body; `response` the held completion (output reviews, samples)."""
        if direction not in ("input", "output"):
            raise ValueError(f"direction must be input or output, not {direction!r}")
        if status not in ("pending", "sampled"):
            raise ValueError(f"a new item is pending or sampled, not {status!r}")
        review = Review(
            id=new_review_id(),
            created=time.time(),
            status=status,
            direction=direction,
            guard=guard,
            model=model,
            key_id=key_id,
            team=team,
            request_id=request_id,
            findings=summarize_findings(findings),
            request=None if request is None else dict(request),
            response=None if response is None else dict(response),
            stream=stream,
        )
        await self.db.execute(
            f"INSERT INTO reviews ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                review.id,
                review.created,
                review.status,
                review.direction,
                review.guard,
                review.model,
                review.key_id,
                review.team,
                review.request_id,
                _dumps(review.findings),
                _dumps(review.request),
                _dumps(review.response),
                int(review.stream),
                None,
                None,
                None,
                None,
            ),
        )
        await self._audit(f"review.{'queued' if status == 'pending' else 'sampled'}", key_id or "system", review)
        return review

    async def find(self, review_id: str) -> Review | None:
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM reviews WHERE id = ?", (review_id,))
        return None if row is None else Review.from_row(row)

    async def get(self, review_id: str) -> Review:
        """The item; ReviewNotFound (404) when there is none."""
        review = await self.find(review_id)
        if review is None:
            raise ReviewNotFound(review_id)
        return review

    async def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> builtins.list[Review]:
        """Items, filtered by status. The pending queue comes oldest first (work it in order);
        everything else newest first."""
        check_status(status)
        limit = max(1, min(limit, LIST_MAX))
        offset = max(0, offset)
        order = "created ASC" if status == "pending" else "created DESC"
        where, params = ("WHERE status = ?", [status]) if status is not None else ("", [])
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM reviews {where} ORDER BY {order}, id LIMIT ? OFFSET ?", (*params, limit, offset)
        )
        return [Review.from_row(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        """How many items are in each status."""
        rows = await self.db.fetchall("SELECT status, COUNT(*) AS n FROM reviews GROUP BY status")
        found = {str(r["status"]): int(r["n"]) for r in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    async def decide(
        self, review_id: str, approve: bool, reviewer: str, label: str | None = None, note: str | None = None
    ) -> Review:
        """Approve or reject a pending item, once. ReviewConflict (409) when it is already decided
        (by anyone, in any process) or is a sample; ReviewNotFound (404) when there is none."""
        check_label(label)
        check_note(note)
        status = "approved" if approve else "rejected"
        # One conditional statement: of two reviewers deciding at once, exactly one matches.
        rows = await self.db.fetchall(
            f"UPDATE reviews SET status = ?, decided_by = ?, decided_at = ?, label = COALESCE(?, label), note = ? "
            f"WHERE id = ? AND status = 'pending' RETURNING {_COLUMNS}",
            (status, reviewer, time.time(), label, note, review_id),
        )
        if not rows:
            current = await self.get(review_id)
            if current.status == "sampled":
                raise ReviewConflict(
                    f"Review {review_id} is a sampled item: it takes a label, not a decision.", param="review_id"
                )
            raise ReviewConflict(
                f"Review {review_id} was already {current.status} by {current.decided_by}.",
                param="review_id",
                code="review_already_decided",
            )
        review = Review.from_row(rows[0])
        await self._audit(f"review.{status}", reviewer, review, reviewer=reviewer, noted=note is not None)
        return review

    async def label(self, review_id: str, label: str, reviewer: str, note: str | None = None) -> Review:
        """Label a sampled item (or relabel a decided one); pending items are decided instead. The
        labeller of a sample is recorded as its reviewer; a decided item keeps its decider."""
        if check_label(label) is None:
            raise InvalidRequest("a label is required", param="label")
        check_note(note)
        previous = await self.get(review_id)
        if previous.status == "pending":
            raise ReviewConflict(
                f"Review {review_id} is pending: approve or reject it (with a label).", param="review_id"
            )
        if previous.status == "sampled":
            sql = "UPDATE reviews SET label = ?, note = COALESCE(?, note), decided_by = ?, decided_at = ? WHERE id = ?"
            params: tuple[Any, ...] = (label, note, reviewer, time.time(), review_id)
        else:
            sql = "UPDATE reviews SET label = ?, note = COALESCE(?, note) WHERE id = ?"
            params = (label, note, review_id)
        await self.db.execute(sql, params)
        review = await self.get(review_id)
        await self._audit("review.labelled", reviewer, review, reviewer=reviewer, previous_label=previous.label)
        return review

    async def set_response(self, review_id: str, response: Mapping[str, Any]) -> Review:
        """Store the answer of an item that has none yet; the first answer stored wins, and the
        item as stored is returned (with that first answer)."""
        await self.db.execute(
            "UPDATE reviews SET response = ? WHERE id = ? AND response IS NULL", (_dumps(dict(response)), review_id)
        )
        return await self.get(review_id)

    async def release(self, review_id: str, release: Release, actor: str = "system") -> Review:
        """The item, with its answer once approved: an approved call held on input runs now (through
        `release`), exactly once in this process however many fetches race (a per-item lock, then a
        second read). Across replicas the first answer stored wins and every fetch returns it."""
        review = await self.get(review_id)
        if review.status != "approved" or review.direction != "input" or review.response is not None:
            return review
        lock = self._releasing.get(review_id)
        if lock is None:
            lock = self._releasing[review_id] = asyncio.Lock()
        async with lock:
            review = await self.get(review_id)
            if review.response is not None:
                return review
            answer = await release(review)
            stored = await self.set_response(review_id, answer)
        await self._audit("review.released", actor, stored)
        return stored
