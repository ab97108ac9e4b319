"""Erasure that reaches every copy: `meshgate erase --bank B --document ID | --source PATH | --subject S`.

What goes:
- the documents (by id, by source, or every document whose text holds the subject), with their
  chunks, vectors and full-text entries on the bank's index, and the versions stored once under them;
- every response-cache entry built from those documents or holding the subject;
- the subject in stored request content: the content of audit records (the chain covers a digest
  of the content, so the chain still verifies: migration 0011) and the request and answer of
  review items;
- and the copies storage keeps of deleted rows: SQLite files are written with `secure_delete`, their
  WAL is checkpointed and truncated and the file vacuumed; PostgreSQL tables that changed get a
  `VACUUM FULL`.

It prints a receipt (counts per store) and audits the erasure with those counts and the subject's
sha256 (never the subject).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meshgate.knowledge.errors import InvalidKnowledgeRequest
from meshgate.knowledge.ingest import remove_document
from meshgate.knowledge.records import DocumentRecord
from meshgate.knowledge.service import KnowledgeService
from meshgate.observe.audit import AuditEvent
from meshgate.store.database import Database, holding, holds
from meshgate.store.responses import erase_responses

log = logging.getLogger("meshgate.knowledge")

MIN_SUBJECT = 3


@dataclass
class Receipt:
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, store: str, count: int) -> None:
        self.counts[store] = self.counts.get(store, 0) + count

    def public(self) -> dict[str, Any]:
        return {"object": "erasure.receipt", "counts": dict(sorted(self.counts.items())), "notes": self.notes}


def _needles(subject: str) -> list[str]:
    """The subject as stored text holds it: as written, and as JSON escapes it."""
    escaped = json.dumps(subject)[1:-1]
    return list(dict.fromkeys([subject, escaped]))


class Eraser:
    def __init__(self, service: KnowledgeService, db: Database, caches: Sequence[Any] = ()) -> None:
        self.service = service
        self.db = db
        #: Response caches (meshgate.cache.service.ResponseCache) to purge.
        self.caches = list(caches)

    async def erase(
        self,
        *,
        bank: str | None = None,
        document: str | None = None,
        source: str | None = None,
        subject: str | None = None,
        actor: str = "cli",
    ) -> Receipt:
        chosen = [x for x in (document, source, subject) if x]
        if len(chosen) != 1:
            raise InvalidKnowledgeRequest("erase: give exactly one of --document, --source or --subject")
        if document and not bank:
            raise InvalidKnowledgeRequest("erase: --document needs --bank")
        if subject is not None and len(subject.strip()) < MIN_SUBJECT:
            raise InvalidKnowledgeRequest(f"erase: --subject must have at least {MIN_SUBJECT} characters")
        receipt = Receipt()
        banks = [await self.service.bank(bank)] if bank else await self.service.banks()
        doomed: list[DocumentRecord] = []
        for record in banks:
            if document:
                doomed.append(await self.service.document(record.name, document))
            elif source:
                found = await self.service.records.by_source(record.name, source)
                if found is not None:
                    doomed.append(found)
            else:
                assert subject is not None
                index = await self.service.index(record.index_kind)
                ids = {chunk.document_id for chunk in await index.chunks_containing(record.name, subject)}
                for doc in await self.service.records.documents(record.name):
                    if doc.id in ids or subject.lower() in (doc.source + "\n" + doc.title).lower():
                        doomed.append(doc)
        removed_ids: list[str] = []
        touched: set[str] = set()
        for doc in doomed:
            if doc.id in removed_ids:
                continue  # a copy stored under a document removed just before: gone with it
            index = await self.service.index((await self.service.bank(doc.bank)).index_kind)
            before = await index.count(doc.bank)
            removed = await remove_document(self.service.records, index, doc)
            receipt.add("documents", len(removed))
            receipt.add("chunks", before - await index.count(doc.bank))
            removed_ids.extend(removed)
            touched.add(index.kind)
        needles = [*removed_ids, *(_needles(subject) if subject else [])]
        for cache in self.caches if needles else ():
            receipt.add("cache_entries", await cache.purge(containing=tuple(n.encode() for n in needles)))
        if subject:
            await self._stored_content(subject, receipt)
        for kind in touched:  # indexes nothing was removed from hold nothing to overwrite
            await (await self.service.index(kind)).compact()
        await self._compact_database()
        detail = {
            "counts": receipt.counts,
            "bank": bank,
            "by": "document" if document else "source" if source else "subject",
        }
        if subject:
            detail["subject_sha256"] = hashlib.sha256(subject.encode()).hexdigest()
        await self.service.record_event(AuditEvent("erasure", actor, bank or "*", detail))
        return receipt

    async def _stored_content(self, subject: str, receipt: Receipt) -> None:
        dialect = self.db.dialect
        audit = 0
        legacy = 0
        reviews = 0
        for needle in _needles(subject):
            pattern = holding(needle)
            rows = await self.db.fetchall(
                f"SELECT seq, content_sha256 FROM audit_log WHERE {holds(dialect, 'content')}", (pattern,)
            )
            erasable = [int(r["seq"]) for r in rows if r["content_sha256"] is not None]
            legacy += len(rows) - len(erasable)
            for seq in erasable:
                await self.db.execute("UPDATE audit_log SET content = NULL WHERE seq = ?", (seq,))
            audit += len(erasable)
            found = await self.db.fetchall(
                f"SELECT id FROM reviews WHERE {holds(dialect, 'request')} OR {holds(dialect, 'response')}",
                (pattern, pattern),
            )
            for row in found:
                await self.db.execute("UPDATE reviews SET request = NULL, response = NULL WHERE id = ?", (row["id"],))
            reviews += len(found)
        receipt.add("audit_contents", audit)
        receipt.add("review_contents", reviews)
        # The Responses API's stored conversations; running servers drop their copies in memory.
        receipt.add("stored_responses", await erase_responses(self.db, _needles(subject)))
        if legacy:
            receipt.notes.append(
                f"{legacy} audit records written before migration 0011 hold the subject in their chained "
                "content; blanking them would break the chain, so they were left (export and re-anchor to drop them)"
            )

    async def _compact_database(self) -> None:
        try:
            if self.db.dialect == "sqlite":
                await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                await self.db.execute("VACUUM")
                await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                for table in ("audit_log", "reviews", "bank_documents", "responses"):
                    await self.db.execute(f"VACUUM FULL {table}")
        except Exception as exc:  # the rows are gone; compaction failing is reported, not fatal
            log.warning("erase: compacting the database failed (%s)", exc)
