"""The Milvus chunk index: one collection per bank, Milvus' own BM25 for keywords, COSINE for vectors.

The same code talks to `milvus-lite` (a local file URI such as `/var/lib/meshgate/milvus.db`, used in
tests) and to a Milvus server (`http://milvus:19530`, with a token) through `pymilvus.MilvusClient`.

- Keywords: the `text` field has an analyzer (standard tokenizer, lowercase, English stemmer, the
  English stop words of knowledge/text.py) and a BM25 function that fills the `sparse` field; a
  search sends the query text and Milvus scores it with BM25 over the bank's own statistics.
  milvus-lite implements the tokenizer, lowercase and stop words but ignores the stemmer, so
  stemming only happens on a Milvus server.
- ACLs are inside the search: `acl` is an ARRAY<VARCHAR> and the search's filter expression holds
  `array_contains_any(acl, [...readers...])`, so Milvus ranks only readable chunks and `limit` counts
  readable ones.
- Filters become the same boolean expression. Every user value is written as a double-quoted string
  literal with backslash escapes (never pasted raw), which both milvus-lite's parser and the server's
  grammar read back as the exact value. milvus-lite has no expression templates, so literals it is.
- `chunks_containing` keeps a case-folded copy of the text (`text_folded`) and narrows with LIKE
  (the LIKE wildcards and the backslash in the needle are widened to `_`), then checks each
  candidate exactly in Python.

pymilvus is synchronous: every call runs on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import numpy as np

from meshgate.knowledge import text as textnorm
from meshgate.knowledge.index.base import (
    ChunkIndex,
    ChunkRef,
    Filters,
    Hit,
    IndexedChunk,
    Readers,
    filter_terms,
)

T = TypeVar("T")

#: Milvus' largest VARCHAR (bytes of UTF-8).
MAX_VARCHAR = 65535
#: Milvus returns at most this many rows from one query (offset + limit).
QUERY_CAP = 16384
#: Most principal tokens one chunk's ACL may hold.
MAX_ACL = 1024
_STRING_FIELDS = {"document_id": 1024, "source": 4096, "title": 2048, "section": 2048, "data_class": 64, "format": 64}
_OUTPUT_FIELDS = [
    "chunk_id",
    "document_id",
    "text",
    "source",
    "title",
    "page",
    "section",
    "start",
    "end",
    "data_class",
    "format",
    "acl",
    "metadata",
]
#: Bank names are free text; collection names allow [A-Za-z0-9_] and must not start with a digit.
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
#: An expression no row satisfies (a filter whose values cannot match anything).
_NOTHING = '(chunk_id == "" and chunk_id != "")'


def literal(value: str) -> str:
    """A Milvus string literal holding exactly `value`: backslash, quote and line breaks escaped."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(literal(value) for value in values) + "]"


def acl_expression(readers: Readers) -> str | None:
    """The ACL part of a search's filter; None when every chunk may be read (an audited admin read)."""
    if readers.all_chunks:
        return None
    return f"array_contains_any(acl, {_list(sorted(readers.tokens))})"


def filter_expression(filters: Filters | None) -> str | None:
    """The filters as a Milvus boolean expression (None for no filter); semantics of base.matches."""
    if not filters:
        return None
    clauses = []
    for term in filter_terms(filters):
        parts: list[str] = []
        if term.field == "metadata":
            path = f"metadata[{literal(term.key or '')}]"
            # JSON paths take `==` only (milvus-lite rejects `in` on them): one equality per value.
            parts += [f"{path} == {literal(option)}" for option in term.values]
            if term.allow_none:
                parts.append(f"not exists {path}")
        else:
            if term.values:
                listed = (
                    f"[{', '.join(str(page) for page in term.values)}]" if term.field == "page" else _list(term.values)
                )
                parts.append(f"{term.field} in {listed}")
            if term.allow_none:
                parts.append(f"{term.field} is null")
        # A filter no value can satisfy matches nothing (as in base.matches).
        clauses.append("(" + " or ".join(parts) + ")" if parts else _NOTHING)
    return " and ".join(clauses)


def _and(*parts: str | None) -> str:
    return " and ".join(f"({part})" for part in parts if part)


def collection_name(prefix: str, bank: str) -> str:
    """A valid, collision-free collection name: the readable part of the bank name and its hash."""
    digest = hashlib.sha256(bank.encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("_", bank)[:64]
    name = f"{prefix}{readable}_{digest}"
    return name if not name[0].isdigit() else f"_{name}"


class MilvusIndex(ChunkIndex):
    kind = "milvus"

    def __init__(
        self,
        uri: str,
        token: str | None = None,
        collection_prefix: str = "meshgate_",
        *,
        index_type: str = "AUTOINDEX",
    ) -> None:
        self.uri, self.token, self.prefix = uri, token, collection_prefix
        #: AUTOINDEX is HNSW on a server; FLAT (exact) is what the contract tests use.
        self.index_type = index_type
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._dimensions: dict[str, int] = {}

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, work: Callable[[], T]) -> T:
        if self._pool is None or self._client is None:
            raise RuntimeError("the index is not open")
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def open(self) -> None:
        if self._client is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="milvus")

        def connect() -> Any:
            from pymilvus import MilvusClient  # type: ignore[import-untyped]  # imported here: only deployments using Milvus load it

            return MilvusClient(uri=self.uri, token=self.token or "")

        self._client = await asyncio.get_running_loop().run_in_executor(self._pool, connect)

    async def close(self) -> None:
        client, pool = self._client, self._pool
        self._client, self._pool = None, None
        if client is not None and pool is not None:
            await asyncio.get_running_loop().run_in_executor(pool, client.close)
        if pool is not None:
            pool.shutdown(wait=False)

    def _name(self, bank: str) -> str:
        return collection_name(self.prefix, bank)

    def _bank_dimensions(self, bank: str) -> int:
        """The bank's vector size (cached); KeyError when the bank does not exist. Runs in the pool."""
        cached = self._dimensions.get(bank)
        if cached is not None:
            return cached
        name = self._name(bank)
        if not self._client.has_collection(name):
            raise KeyError(f"no knowledge bank {bank!r} in the index")
        described = self._client.describe_collection(name)
        for described_field in described["fields"]:
            if described_field["name"] == "vector":
                dimensions = int(described_field["params"]["dim"])
                self._dimensions[bank] = dimensions
                return dimensions
        raise KeyError(f"collection {name!r} is not a meshgate bank (no vector field)")

    # -- banks ---------------------------------------------------------------------------------

    async def create_bank(self, bank: str, dimensions: int) -> None:
        def work() -> None:
            try:
                existing = self._bank_dimensions(bank)
            except KeyError:
                existing = None
            if existing is not None:
                if existing != dimensions:
                    raise ValueError(f"bank {bank!r} exists with {existing} dimensions, not {dimensions}")
                return
            self._create(self._name(bank), dimensions)
            self._dimensions[bank] = dimensions

        await self._call(work)

    def _create(self, name: str, dimensions: int) -> None:
        from pymilvus import DataType, Function, FunctionType

        client = self._client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=1024)
        analyzer = {
            "tokenizer": "standard",
            "filter": [
                "lowercase",
                {"type": "stemmer", "language": "english"},
                {"type": "stop", "stop_words": sorted(textnorm.STOP_WORDS)},
            ],
        }
        schema.add_field(
            "text", DataType.VARCHAR, max_length=MAX_VARCHAR, enable_analyzer=True, analyzer_params=analyzer
        )
        schema.add_field("text_folded", DataType.VARCHAR, max_length=MAX_VARCHAR)
        for field_name, length in _STRING_FIELDS.items():
            schema.add_field(field_name, DataType.VARCHAR, max_length=length, nullable=field_name == "section")
        schema.add_field("page", DataType.INT64, nullable=True)
        schema.add_field("start", DataType.INT64)
        schema.add_field("end", DataType.INT64)
        schema.add_field("acl", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_ACL, max_length=512)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimensions)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        indexes = client.prepare_index_params()
        indexes.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        indexes.add_index(field_name="vector", index_type=self.index_type, metric_type="COSINE")
        # Strong consistency: a search sees every write acknowledged before it (ingest, then search).
        client.create_collection(name, schema=schema, index_params=indexes, consistency_level="Strong")

    async def drop_bank(self, bank: str) -> None:
        def work() -> None:
            name = self._name(bank)
            if self._client.has_collection(name):
                self._client.drop_collection(name)
            self._dimensions.pop(bank, None)

        await self._call(work)

    # -- writes --------------------------------------------------------------------------------

    @staticmethod
    def _row(item: IndexedChunk, dimensions: int) -> dict[str, Any]:
        chunk = item.chunk
        vector = np.asarray(item.vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != dimensions:
            raise ValueError(f"bank holds {dimensions}-dimensional vectors, not {vector.shape[0]}")
        folded = chunk.text.casefold()
        if len(folded.encode()) > MAX_VARCHAR or len(chunk.text.encode()) > MAX_VARCHAR:
            raise ValueError(f"chunk {chunk.chunk_id!r} is longer than Milvus' {MAX_VARCHAR}-byte text field")
        if len(chunk.acl) > MAX_ACL:
            raise ValueError(f"chunk {chunk.chunk_id!r} has more than {MAX_ACL} ACL tokens")
        return {
            "chunk_id": chunk.chunk_id,
            "document_id": chunk.document_id,
            "text": chunk.text,
            "text_folded": folded,
            "source": chunk.source,
            "title": chunk.title,
            "section": chunk.section,
            "data_class": chunk.data_class,
            "format": chunk.format,
            "page": chunk.page,
            "start": chunk.start,
            "end": chunk.end,
            "acl": sorted(set(chunk.acl)),
            "metadata": dict(chunk.metadata),
            "vector": vector.tolist(),
        }

    async def upsert(self, bank: str, chunks: Sequence[IndexedChunk]) -> None:
        if not chunks:
            return

        def work() -> None:
            dimensions = self._bank_dimensions(bank)
            rows = [self._row(item, dimensions) for item in chunks]
            # One request: Milvus applies a batch as a unit (the last row of a repeated id wins).
            self._client.upsert(self._name(bank), rows)

        await self._call(work)

    async def delete_documents(self, bank: str, document_ids: Sequence[str]) -> int:
        documents = list(dict.fromkeys(document_ids))
        if not documents:
            return 0

        def work() -> int:
            self._bank_dimensions(bank)
            name = self._name(bank)
            expression = f"document_id in {_list(documents)}"
            counted = self._client.query(name, filter=expression, output_fields=["count(*)"])
            removed = int(counted[0]["count(*)"]) if counted else 0
            if removed:
                self._client.delete(name, filter=expression)
            return removed

        return await self._call(work)

    # -- reads ---------------------------------------------------------------------------------

    async def count(self, bank: str) -> int:
        def work() -> int:
            self._bank_dimensions(bank)
            counted = self._client.query(self._name(bank), filter="", output_fields=["count(*)"])
            return int(counted[0]["count(*)"]) if counted else 0

        return await self._call(work)

    @staticmethod
    def _ref(entity: Mapping[str, Any]) -> ChunkRef:
        page = entity.get("page")
        return ChunkRef(
            chunk_id=str(entity["chunk_id"]),
            document_id=str(entity["document_id"]),
            text=str(entity["text"]),
            source=str(entity["source"]),
            title=str(entity["title"]),
            page=int(page) if page is not None else None,
            section=entity.get("section"),
            start=int(entity.get("start") or 0),
            end=int(entity.get("end") or 0),
            data_class=str(entity["data_class"]),
            format=str(entity["format"]),
            acl=tuple(entity.get("acl") or ()),
            metadata={str(key): str(value) for key, value in (entity.get("metadata") or {}).items()},
        )

    def _search(
        self, bank: str, data: Any, field: str, metric: str, readers: Readers, k: int, filters: Filters | None
    ) -> list[Hit]:
        self._bank_dimensions(bank)
        expression = _and(acl_expression(readers), filter_expression(filters))
        results = self._client.search(
            self._name(bank),
            data=[data],
            anns_field=field,
            limit=k,
            filter=expression,
            output_fields=_OUTPUT_FIELDS,
            search_params={"metric_type": metric},
        )
        hits = []
        for found in results[0] if results else []:
            distance = float(found["distance"])
            # BM25 scores are non-negative; milvus-lite reports them negated (smaller is better).
            score = abs(distance) if metric == "BM25" else distance
            hits.append(Hit(self._ref(found["entity"]), score))
        return hits

    async def keyword_search(
        self, bank: str, query: str, readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        # The analyzer drops stop words: a query of only stop words has nothing to score.
        if k <= 0 or not textnorm.query_terms(query) or (not readers.all_chunks and not readers.tokens):
            filter_expression(filters)  # an unknown filter field is still an error
            return []
        return await self._call(partial(self._search, bank, query, "sparse", "BM25", readers, k, filters))

    async def vector_search(
        self, bank: str, vector: np.ndarray[Any, Any], readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if k <= 0 or (not readers.all_chunks and not readers.tokens):
            filter_expression(filters)
            return []

        def work() -> list[Hit]:
            dimensions = self._bank_dimensions(bank)
            if query.shape[0] != dimensions:
                raise ValueError(f"bank {bank!r} holds {dimensions}-dimensional vectors, not {query.shape[0]}")
            return self._search(bank, query.tolist(), "vector", "COSINE", readers, k, filters)

        return await self._call(work)

    async def chunks_containing(self, bank: str, text: str) -> list[ChunkRef]:
        needle = text.casefold()
        if not needle:
            return []
        # LIKE's wildcards and escape character in the needle become `_` (any one character): the
        # pattern matches a superset, checked exactly below.
        pattern = "%" + re.sub(r"[%_\\]", "_", needle) + "%"

        def work() -> list[ChunkRef]:
            self._bank_dimensions(bank)
            rows = self._query_all(self._name(bank), f"text_folded like {literal(pattern)}")
            return [self._ref(row) for row in rows if needle in str(row["text"]).casefold()]

        return await self._call(work)

    def _query_all(self, name: str, expression: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = list(
            self._client.query(name, filter=expression, output_fields=_OUTPUT_FIELDS, limit=QUERY_CAP)
        )
        if len(rows) < QUERY_CAP:
            return rows
        # More than one query can return: page through with an iterator (ordered by primary key).
        rows = []
        iterator = self._client.query_iterator(name, batch_size=1000, filter=expression, output_fields=_OUTPUT_FIELDS)
        try:
            while batch := iterator.next():
                rows.extend(batch)
        finally:
            iterator.close()
        return rows
