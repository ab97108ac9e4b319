"""Banks and documents as the database holds them (tables `banks`, `bank_documents`, migration 0010)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from meshgate.store.database import Database, Queries, Row

#: The chunk index a bank uses unless it names one.
DEFAULT_INDEX = "embedded"
DEFAULT_EMBEDDER = "local-embed"


@dataclass(frozen=True)
class BankRecord:
    name: str
    team: str | None
    embedder: str
    index_kind: str
    dimensions: int
    #: The least data class of every document (a document's detectors may only raise it).
    data_class: str
    #: The ACL of documents ingested without one.
    acl: tuple[str, ...]
    description: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "object": "knowledge.bank",
            "team": self.team,
            "embedder": self.embedder,
            "index": self.index_kind,
            "dimensions": self.dimensions,
            "data_class": self.data_class,
            "default_acl": list(self.acl),
            "description": self.description,
            "created_at": int(self.created_at),
        }


@dataclass(frozen=True)
class DocumentRecord:
    id: str
    bank: str
    source: str
    title: str
    format: str
    content_hash: str
    text_hash: str
    acl: tuple[str, ...]
    data_class: str
    chunks: int
    tokens: int
    bytes: int
    pages: int | None = None
    minhash: str | None = None
    #: A document stored once: this one's chunks are the other's (exact or near duplicate).
    duplicate_of: str | None = None
    similarity: float | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "knowledge.document",
            "bank": self.bank,
            "source": self.source,
            "title": self.title,
            "format": self.format,
            "acl": list(self.acl),
            "data_class": self.data_class,
            "chunks": self.chunks,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "pages": self.pages,
            "content_hash": self.content_hash,
            "duplicate_of": self.duplicate_of,
            "similarity": self.similarity,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
        }


def _bank(row: Row) -> BankRecord:
    return BankRecord(
        name=row["name"],
        team=row["team"],
        embedder=row["embedder"],
        index_kind=row["index_kind"],
        dimensions=int(row["dimensions"]),
        data_class=row["data_class"],
        acl=tuple(json.loads(row["acl"])),
        description=row["description"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


_DOC_COLUMNS = (
    "id, bank, source, title, format, content_hash, text_hash, minhash, duplicate_of, similarity, acl, "
    "data_class, chunks, tokens, bytes, pages, created_at, updated_at"
)


def _document(row: Row) -> DocumentRecord:
    return DocumentRecord(
        id=row["id"],
        bank=row["bank"],
        source=row["source"],
        title=row["title"],
        format=row["format"],
        content_hash=row["content_hash"],
        text_hash=row["text_hash"],
        minhash=row["minhash"],
        duplicate_of=row["duplicate_of"],
        similarity=None if row["similarity"] is None else float(row["similarity"]),
        acl=tuple(json.loads(row["acl"])),
        data_class=row["data_class"],
        chunks=int(row["chunks"]),
        tokens=int(row["tokens"]),
        bytes=int(row["bytes"]),
        pages=None if row["pages"] is None else int(row["pages"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


class BankRecords:
    """Reads and writes of the two tables; one statement per call, no business rules."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_bank(self, bank: BankRecord) -> BankRecord:
        now = time.time()
        bank = replace(bank, created_at=now, updated_at=now)
        await self.db.execute(
            "INSERT INTO banks (name, team, embedder, index_kind, dimensions, data_class, acl, description, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                bank.name,
                bank.team,
                bank.embedder,
                bank.index_kind,
                bank.dimensions,
                bank.data_class,
                json.dumps(list(bank.acl)),
                bank.description,
                bank.created_at,
                bank.updated_at,
            ),
        )
        return bank

    async def bank(self, name: str) -> BankRecord | None:
        row = await self.db.fetchone("SELECT * FROM banks WHERE name = ?", (name,))
        return None if row is None else _bank(row)

    async def banks(self) -> list[BankRecord]:
        return [_bank(row) for row in await self.db.fetchall("SELECT * FROM banks ORDER BY name")]

    async def delete_bank(self, name: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM bank_documents WHERE bank = ?", (name,))
            await tx.execute("DELETE FROM banks WHERE name = ?", (name,))

    async def documents(self, bank: str, limit: int | None = None, after: str = "") -> list[DocumentRecord]:
        sql = f"SELECT {_DOC_COLUMNS} FROM bank_documents WHERE bank = ? AND id > ? ORDER BY id"
        params: list[Any] = [bank, after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_document(row) for row in await self.db.fetchall(sql, params)]

    async def document(self, bank: str, document_id: str) -> DocumentRecord | None:
        row = await self.db.fetchone(
            f"SELECT {_DOC_COLUMNS} FROM bank_documents WHERE bank = ? AND id = ?", (bank, document_id)
        )
        return None if row is None else _document(row)

    async def by_source(self, bank: str, source: str) -> DocumentRecord | None:
        row = await self.db.fetchone(
            f"SELECT {_DOC_COLUMNS} FROM bank_documents WHERE bank = ? AND source = ?", (bank, source)
        )
        return None if row is None else _document(row)

    async def same_content(self, bank: str, content_hash: str, text_hash: str) -> list[DocumentRecord]:
        """Documents of `bank` with the same bytes or the same normalised text, oldest first."""
        rows = await self.db.fetchall(
            f"SELECT {_DOC_COLUMNS} FROM bank_documents WHERE bank = ? AND (content_hash = ? OR text_hash = ?) "
            "ORDER BY created_at",
            (bank, content_hash, text_hash),
        )
        return [_document(row) for row in rows]

    async def duplicates_of(self, bank: str, document_id: str) -> list[DocumentRecord]:
        rows = await self.db.fetchall(
            f"SELECT {_DOC_COLUMNS} FROM bank_documents WHERE bank = ? AND duplicate_of = ? ORDER BY id",
            (bank, document_id),
        )
        return [_document(row) for row in rows]

    async def put_document(self, doc: DocumentRecord, tx: Queries | None = None) -> None:
        """Insert or replace (by bank + source)."""
        target = tx or self.db
        await target.execute("DELETE FROM bank_documents WHERE bank = ? AND source = ?", (doc.bank, doc.source))
        await target.execute(
            f"INSERT INTO bank_documents ({_DOC_COLUMNS}) VALUES (" + ", ".join("?" * 18) + ")",
            (
                doc.id,
                doc.bank,
                doc.source,
                doc.title,
                doc.format,
                doc.content_hash,
                doc.text_hash,
                doc.minhash,
                doc.duplicate_of,
                doc.similarity,
                json.dumps(list(doc.acl)),
                doc.data_class,
                doc.chunks,
                doc.tokens,
                doc.bytes,
                doc.pages,
                doc.created_at,
                doc.updated_at,
            ),
        )

    async def delete_documents(self, bank: str, document_ids: list[str]) -> int:
        if not document_ids:
            return 0
        async with self.db.transaction() as tx:
            for document_id in document_ids:
                await tx.execute("DELETE FROM bank_documents WHERE bank = ? AND id = ?", (bank, document_id))
        return len(document_ids)
