"""The contract every chunk index implements: keyword (BM25) and vector search, both with the
reader's ACL applied *inside* the query, so `k` readable chunks come back whenever they exist.

A bank is a namespace inside one index (a collection, a table partition, a namespace): every call
names its bank. Vectors are float32 unit vectors (cosine similarity = dot product).

ACLs are tuples of principal tokens: `public`, `team:<name>`, `user:<name>`, `group:<name>`. A chunk
is readable by a caller whose token set (`Readers`) shares at least one token with the chunk's ACL.
`Readers.everyone()` is for admin searches that were asked for explicitly (and audited by the caller).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Fields a search filter may name (besides `metadata.<key>`); values are compared for equality,
#: a list means "any of".
FILTER_FIELDS = ("document_id", "source", "title", "data_class", "format", "section", "page")


@dataclass(frozen=True)
class ChunkRef:
    """What a search returns of a chunk (everything but its vector)."""

    chunk_id: str
    document_id: str
    text: str
    source: str
    title: str
    page: int | None = None
    section: str | None = None
    #: Character offsets of the chunk in its document's extracted text.
    start: int = 0
    end: int = 0
    data_class: str = "internal"
    format: str = "text"
    acl: tuple[str, ...] = ("public",)
    #: Free string metadata a filter may name as `metadata.<key>`.
    metadata: Mapping[str, str] = field(default_factory=dict)

    def where(self) -> dict[str, Any]:
        """Where the chunk comes from, as search results and citations show it."""
        return {
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "source": self.source,
            "title": self.title,
            "page": self.page,
            "section": self.section,
        }


@dataclass(frozen=True)
class IndexedChunk:
    chunk: ChunkRef
    vector: np.ndarray[Any, Any]


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRef
    #: Backend-native relevance (BM25 score, cosine similarity); higher is better.
    score: float

    def public(self) -> dict[str, Any]:
        """The wire form of a search result (`POST /v1/banks/{bank}/search`, `banks search --json`)."""
        chunk = self.chunk
        return {
            "text": chunk.text,
            "score": round(float(self.score), 6),
            **chunk.where(),
            "data_class": chunk.data_class,
        }


@dataclass(frozen=True)
class Readers:
    """The principal tokens of one caller; `all_chunks` only for an explicit, audited admin read."""

    tokens: frozenset[str]
    all_chunks: bool = False

    @classmethod
    def of(cls, *tokens: str) -> Readers:
        return cls(frozenset(tokens))

    @classmethod
    def everyone(cls) -> Readers:
        return cls(frozenset(), all_chunks=True)

    def may_read(self, acl: Sequence[str]) -> bool:
        return self.all_chunks or not self.tokens.isdisjoint(acl)


Filters = Mapping[str, Any]


@dataclass(frozen=True)
class FilterTerm:
    """One search filter, normalised for a backend to translate: the values any of which the field
    must equal (ints for `page`, strings otherwise; other types never match), and whether a missing
    value (`None` among the options) matches too."""

    field: str  # a FILTER_FIELDS name, or "metadata"
    key: str | None  # the metadata key (field "metadata")
    values: tuple[Any, ...]
    allow_none: bool


def filter_terms(filters: Filters | None) -> list[FilterTerm]:
    """The filters as terms (base.matches' semantics); ValueError names an unknown field."""
    terms: list[FilterTerm] = []
    for name, wanted in (filters or {}).items():
        options = list(wanted) if isinstance(wanted, list | tuple) else [wanted]
        if name.startswith("metadata."):
            field_name, key = "metadata", name[len("metadata.") :]
        elif name in FILTER_FIELDS:
            field_name, key = name, None
        else:
            raise ValueError(f"unknown filter field {name!r}; use one of {', '.join(FILTER_FIELDS)} or metadata.<key>")
        values: tuple[Any, ...]
        if field_name == "page":
            values = tuple(o for o in options if isinstance(o, int) and not isinstance(o, bool))
        else:
            values = tuple(o for o in options if isinstance(o, str))
        terms.append(FilterTerm(field_name, key, values, None in options))
    return terms


def matches(chunk: ChunkRef, filters: Filters | None) -> bool:
    """The reference semantics of filters (backends translate them into their own query language)."""
    if not filters:
        return True
    for name, wanted in filters.items():
        if name.startswith("metadata."):
            value: Any = chunk.metadata.get(name[len("metadata.") :])
        elif name in FILTER_FIELDS:
            value = getattr(chunk, name)
        else:
            raise ValueError(f"unknown filter field {name!r}; use one of {', '.join(FILTER_FIELDS)} or metadata.<key>")
        options = wanted if isinstance(wanted, list | tuple) else [wanted]
        if value not in options:
            return False
    return True


class ChunkIndex(ABC):
    """One store of chunks for many banks. Methods are async; blocking work runs off the event loop."""

    #: "embedded", "milvus", "pgvector", "pinecone"
    kind: str

    @abstractmethod
    async def open(self) -> None:
        """Connect / create what is missing. Idempotent."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def create_bank(self, bank: str, dimensions: int) -> None:
        """Make the bank's namespace (idempotent for the same dimensions)."""

    @abstractmethod
    async def drop_bank(self, bank: str) -> None: ...

    @abstractmethod
    async def upsert(self, bank: str, chunks: Sequence[IndexedChunk]) -> None:
        """Add chunks, replacing any with the same chunk_id. All-or-nothing per call where the store allows."""

    @abstractmethod
    async def delete_documents(self, bank: str, document_ids: Sequence[str]) -> int:
        """Remove every chunk (text, vector, full-text entry) of these documents; the number removed."""

    @abstractmethod
    async def keyword_search(
        self, bank: str, query: str, readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        """BM25 (or the store's full-text ranking) over chunks the readers may read, best first."""

    @abstractmethod
    async def vector_search(
        self, bank: str, vector: np.ndarray[Any, Any], readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        """Cosine similarity over chunks the readers may read, best first."""

    @abstractmethod
    async def chunks_containing(self, bank: str, text: str) -> list[ChunkRef]:
        """Every chunk whose text contains `text` (case-insensitive): erasure by subject."""

    @abstractmethod
    async def count(self, bank: str) -> int: ...

    async def compact(self) -> None:
        """Make deleted content unrecoverable from the store's files where the store allows
        (SQLite: secure_delete is on; checkpoint the WAL and vacuum). Default: nothing to do."""
