"""Ingest: files in, documents and chunks out, incrementally, all or nothing per file.

Per file: read, hash (unchanged files stop here), parse, chunk, classify and sign (MinHash) in a
worker thread; duplicates (same bytes or text, or a near duplicate with the same ACL) are recorded
and stored once; the chunks are embedded in batches, written to the bank's index, and only then is
the document recorded. A failure at any step removes what that file had written and is reported
with its reason; the other files go on. An updated file gets a new document id (ids name one
version of a document); the old version's chunks are removed once the new one is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from meshgate.knowledge.acl import format_acl
from meshgate.knowledge.chunking import Chunk, chunk_document
from meshgate.knowledge.classify import Classification, Classifier
from meshgate.knowledge.dedupe import NEAR_DUPLICATE_THRESHOLD, MinHasher, NearDuplicateIndex, content_hash, text_hash
from meshgate.knowledge.index.base import ChunkIndex, ChunkRef, IndexedChunk
from meshgate.knowledge.parsing import ParsedDocument, ParseError, parse_document
from meshgate.knowledge.records import BankRecord, BankRecords, DocumentRecord
from meshgate.providers.base import CallContext, EmbeddingModel

log = logging.getLogger("meshgate.knowledge")

#: Texts per embedding call (the local embedder batches them further on its own).
EMBED_BATCH = 32
#: Chunk budget in the embedder's tokens: under all-MiniLM's 256 with room for [CLS]/[SEP].
MAX_CHUNK_TOKENS = 200
OVERLAP_TOKENS = 40


@dataclass(frozen=True)
class IngestItem:
    """One file (or text) to ingest. `read` runs in a worker thread."""

    source: str
    filename: str
    read: Callable[[], bytes]
    content_type: str | None = None
    title: str | None = None
    #: Who may read it; None: the run's ACL.
    acl: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FileOutcome:
    source: str
    #: added | updated | unchanged | duplicate | removed | failed
    status: str
    document_id: str | None = None
    chunks: int = 0
    tokens: int = 0
    reason: str | None = None
    duplicate_of: str | None = None
    similarity: float | None = None
    data_class: str | None = None

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Progress:
    files_total: int
    files_done: int = 0
    chunks: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    current: str = ""

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class IngestReport:
    bank: str
    outcomes: list[FileOutcome] = field(default_factory=list)
    elapsed: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def chunks(self) -> int:
        return sum(o.chunks for o in self.outcomes if o.status in ("added", "updated"))

    @property
    def tokens(self) -> int:
        return sum(o.tokens for o in self.outcomes if o.status in ("added", "updated"))

    def summary(self) -> dict[str, Any]:
        seconds = max(self.elapsed, 1e-9)
        written = self.count("added") + self.count("updated")
        return {
            "bank": self.bank,
            "added": self.count("added"),
            "updated": self.count("updated"),
            "unchanged": self.count("unchanged"),
            "duplicates": self.count("duplicate"),
            "removed": self.count("removed"),
            "failed": self.count("failed"),
            "chunks": self.chunks,
            "tokens": self.tokens,
            "seconds": round(self.elapsed, 3),
            "documents_per_second": round(written / seconds, 2),
            "chunks_per_second": round(self.chunks / seconds, 1),
            "failures": [{"source": o.source, "reason": o.reason} for o in self.outcomes if o.status == "failed"],
        }


@dataclass(frozen=True)
class _Prepared:
    parsed: ParsedDocument
    chunks: list[Chunk]
    texts: list[str]
    tokens: int
    text_hash: str
    signature: np.ndarray[Any, Any]
    classification: Classification


def document_id(bank: str, source: str, raw_hash: str) -> str:
    """One version of one document: the same bytes at the same source keep their id."""
    return "doc_" + hashlib.sha256(f"{bank}\0{source}\0{raw_hash}".encode()).hexdigest()[:24]


def token_counter(embedder: EmbeddingModel) -> Callable[[str], int]:
    """The embedder's own token count when it has one (the local model), else ~4 characters a token."""
    count = getattr(embedder, "count_tokens", None)
    if callable(count):
        return count  # type: ignore[no-any-return]
    return lambda text: max(1, len(text) // 4)


class Ingestor:
    def __init__(
        self,
        bank: BankRecord,
        records: BankRecords,
        index: ChunkIndex,
        embedder: EmbeddingModel,
        classifier: Classifier,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.bank, self.records, self.index, self.embedder = bank, records, index, embedder
        self.classifier = classifier
        self.on_progress = on_progress or (lambda progress: None)
        self.hasher = MinHasher()
        self._count_tokens = token_counter(embedder)
        self._near: NearDuplicateIndex | None = None
        self._acl_of: dict[str, tuple[str, ...]] = {}

    async def _near_index(self) -> NearDuplicateIndex:
        if self._near is None:
            near = NearDuplicateIndex(NEAR_DUPLICATE_THRESHOLD)
            for doc in await self.records.documents(self.bank.name):
                if doc.duplicate_of is None and doc.minhash:
                    near.add(doc.id, MinHasher.from_bytes(bytes.fromhex(doc.minhash)))
                    self._acl_of[doc.id] = doc.acl
            self._near = near
        return self._near

    async def run(
        self, items: Sequence[IngestItem], acl: tuple[str, ...], sync_sources: set[str] | None = None
    ) -> IngestReport:
        """Ingest `items`; with `sync_sources` (the --sync set), first remove documents whose source
        is not among them."""
        report = IngestReport(self.bank.name)
        started = time.monotonic()
        progress = Progress(len(items))
        if sync_sources is not None:
            report.outcomes.extend(await self._remove_missing(sync_sources))
        for item in items:
            progress.current = item.source
            outcome = await self._one(item, item.acl or acl)
            report.outcomes.append(outcome)
            progress.files_done += 1
            if outcome.status in ("added", "updated"):
                progress.chunks += outcome.chunks
                progress.tokens += outcome.tokens
            self.on_progress(progress)
        report.elapsed = time.monotonic() - started
        return report

    async def _remove_missing(self, present: set[str]) -> list[FileOutcome]:
        gone = [doc for doc in await self.records.documents(self.bank.name) if doc.source not in present]
        outcomes = []
        for doc in gone:
            await remove_document(self.records, self.index, doc)
            outcomes.append(FileOutcome(doc.source, "removed", doc.id, chunks=doc.chunks))
        self._near = None
        return outcomes

    async def _one(self, item: IngestItem, acl: tuple[str, ...]) -> FileOutcome:
        try:
            data = await asyncio.to_thread(item.read)
        except OSError as exc:
            return FileOutcome(item.source, "failed", reason=f"cannot read: {exc.strerror or exc}")
        raw_hash = content_hash(data)
        existing = await self.records.by_source(self.bank.name, item.source)
        if existing is not None and existing.content_hash == raw_hash and existing.acl == acl:
            return FileOutcome(
                item.source, "unchanged", existing.id, chunks=existing.chunks, data_class=existing.data_class
            )
        try:
            prepared = await asyncio.to_thread(self._prepare, data, item)
        except ParseError as exc:
            return FileOutcome(item.source, "failed", reason=exc.reason)
        except Exception as exc:  # a parser bug must not stop the run or leave anything behind
            log.exception("knowledge: preparing %s failed", item.source)
            return FileOutcome(item.source, "failed", reason=f"internal error while parsing ({type(exc).__name__})")
        new_id = document_id(self.bank.name, item.source, raw_hash)
        record = DocumentRecord(
            id=new_id,
            bank=self.bank.name,
            source=item.source,
            title=item.title or prepared.parsed.title,
            format=prepared.parsed.format,
            content_hash=raw_hash,
            text_hash=prepared.text_hash,
            minhash=MinHasher.to_bytes(prepared.signature).hex(),
            acl=acl,
            data_class=prepared.classification.data_class,
            chunks=len(prepared.chunks),
            tokens=prepared.tokens,
            bytes=len(data),
            pages=max((c.page or 0 for c in prepared.chunks), default=0) or None,
            created_at=existing.created_at if existing else time.time(),
        )
        status = "updated" if existing is not None else "added"
        duplicate = await self._duplicate_of(record, prepared.signature, existing)
        if duplicate is not None:
            original, similarity = duplicate
            record = replace(record, duplicate_of=original, similarity=round(similarity, 4), chunks=0)
            await self.records.put_document(record)
            if existing is not None and existing.duplicate_of is None:
                await self._drop_old(existing)
            return FileOutcome(
                item.source,
                "duplicate",
                new_id,
                duplicate_of=original,
                similarity=record.similarity,
                data_class=record.data_class,
            )
        try:
            vectors = await self._embed(prepared.texts)
            await self.index.upsert(self.bank.name, self._indexed(record, prepared, vectors))
            await self.records.put_document(record)
        except Exception as exc:
            log.warning("knowledge: ingesting %s failed (%s); removing what it wrote", item.source, exc)
            try:
                await self.index.delete_documents(self.bank.name, [new_id])
            except Exception:
                log.exception("knowledge: cleaning up %s failed", new_id)
            return FileOutcome(item.source, "failed", reason=_reason(exc))
        if existing is not None and existing.id != new_id and existing.duplicate_of is None:
            await self._drop_old(existing)
        if self._near is not None:
            self._near.add(new_id, prepared.signature)
            self._acl_of[new_id] = acl
        return FileOutcome(
            item.source,
            status,
            new_id,
            chunks=len(prepared.chunks),
            tokens=prepared.tokens,
            data_class=record.data_class,
        )

    async def _drop_old(self, old: DocumentRecord) -> None:
        await self.index.delete_documents(self.bank.name, [old.id])
        # Versions stored once under the old one are dropped with it; their files come back as new
        # documents the next time they are ingested.
        for dup in await self.records.duplicates_of(self.bank.name, old.id):
            await self.records.delete_documents(self.bank.name, [dup.id])

    async def _duplicate_of(
        self, record: DocumentRecord, signature: np.ndarray[Any, Any], existing: DocumentRecord | None
    ) -> tuple[str, float] | None:
        for doc in await self.records.same_content(record.bank, record.content_hash, record.text_hash):
            if doc.source != record.source and doc.duplicate_of is None and doc.acl == record.acl:
                return doc.id, 1.0
        near = await self._near_index()
        for found, similarity in near.find(signature):
            doc_id = str(found)
            if existing is not None and doc_id == existing.id:
                continue
            if self._acl_of.get(doc_id) == record.acl:
                return doc_id, similarity
        return None

    def _prepare(self, data: bytes, item: IngestItem) -> _Prepared:
        """In a worker thread: everything whose cost grows with the file."""
        parsed = parse_document(data, item.filename, item.content_type)
        max_tokens = min(MAX_CHUNK_TOKENS, _embedder_limit(self.embedder) - 16)
        chunks = chunk_document(parsed, self._count_tokens, max_tokens=max_tokens, overlap_tokens=OVERLAP_TOKENS)
        if not chunks:
            raise ParseError("no extractable text")
        texts = [chunk.text for chunk in chunks]
        tokens = sum(self._count_tokens(text) for text in texts)
        whole = parsed.text
        return _Prepared(
            parsed=parsed,
            chunks=chunks,
            texts=texts,
            tokens=tokens,
            text_hash=text_hash(whole),
            signature=self.hasher.signature(whole),
            classification=self.classifier.classify(whole, self.bank.data_class),
        )

    async def _embed(self, texts: list[str]) -> list[np.ndarray[Any, Any]]:
        vectors: list[np.ndarray[Any, Any]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            result = await self.embedder.embed(texts[start : start + EMBED_BATCH], CallContext(request_id="ingest"))
            for row in result.vectors:
                vector = np.asarray(row, dtype=np.float32)
                norm = float(np.linalg.norm(vector))
                vectors.append(vector / norm if norm > 0 else vector)
        return vectors

    def _indexed(
        self, record: DocumentRecord, prepared: _Prepared, vectors: list[np.ndarray[Any, Any]]
    ) -> list[IndexedChunk]:
        return [
            IndexedChunk(
                ChunkRef(
                    chunk_id=f"{record.id}-{chunk.ordinal:05d}",
                    document_id=record.id,
                    text=text,
                    source=record.source,
                    title=record.title,
                    page=chunk.page,
                    section=chunk.section,
                    start=chunk.start,
                    end=chunk.end,
                    data_class=record.data_class,
                    format=record.format,
                    acl=record.acl,
                ),
                vector,
            )
            for chunk, text, vector in zip(prepared.chunks, prepared.texts, vectors, strict=True)
        ]


async def remove_document(records: BankRecords, index: ChunkIndex, doc: DocumentRecord) -> list[str]:
    """Remove a document, its chunks and the versions stored once under it; the ids removed."""
    removed = [doc.id]
    if doc.duplicate_of is None:
        await index.delete_documents(doc.bank, [doc.id])
        removed.extend(dup.id for dup in await records.duplicates_of(doc.bank, doc.id))
    await records.delete_documents(doc.bank, removed)
    return removed


def _embedder_limit(embedder: EmbeddingModel) -> int:
    window = getattr(getattr(embedder, "profile", None), "context_window", None)
    return int(window) if isinstance(window, int) and window > 0 else 512


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"[:300]


__all__ = ["FileOutcome", "IngestItem", "IngestReport", "Ingestor", "Progress", "format_acl", "remove_document"]
