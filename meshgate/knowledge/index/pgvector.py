"""The pgvector chunk index: PostgreSQL with the `vector` extension, one table per bank, over asyncpg.

Layout: `meshgate_index_banks` maps each bank name to its table (`meshgate_chunks_<hash of the
name>`, so any bank name is safe) and vector size. A bank's table holds every ChunkRef field, the
ACL as `text[]` (GIN index), the metadata as `jsonb`, the vector as `vector(d)` (HNSW index, cosine)
and a generated `tsvector` of the text (`english` configuration, GIN index).

- Keywords: the query's own lexemes (`to_tsvector('english', query)`, so stemming and stop words are
  those of the documents) are OR-ed into a tsquery; rows are ranked with `ts_rank_cd` (cover density,
  length-normalised). This is PostgreSQL's ranking, not BM25: no IDF.
- ACLs are in the WHERE clause: `acl && $readers`, so ORDER BY/LIMIT only ever sees readable rows.
  HNSW with a selective WHERE would stop after `ef_search` candidates; pgvector >= 0.8's iterative
  index scan (`hnsw.iterative_scan = strict_order`, set per transaction) keeps scanning until `k`
  rows pass the filters, up to `hnsw.max_scan_tuples` visited rows (see `max_scan_tuples`).
- Filters are parameterised SQL (`$n` values, never text pasted into the statement); identifiers in
  the SQL are all our own.
- `chunks_containing` narrows with `strpos(lower(text), lower($1))` and checks each candidate with
  Python's casefold (the embedded index's semantics).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import numpy as np

from meshgate.knowledge.index.base import (
    ChunkIndex,
    ChunkRef,
    Filters,
    Hit,
    IndexedChunk,
    Readers,
    filter_terms,
)

BANKS_TABLE = "meshgate_index_banks"
#: Serialises DDL of concurrent processes (bank creation) on one database.
_DDL_LOCK = 0x6D657368  # "mesh"
_COLUMNS = (
    "chunk_id, document_id, text, source, title, page, section, start_offset, end_offset, data_class, format, acl, "
    "metadata"
)
_FIELD_COLUMNS = {"document_id", "source", "title", "data_class", "format", "section"}
#: The tsquery of a query text: its english lexemes, each quoted, OR-ed. A lexeme is data here:
#: quotes and backslashes inside it are escaped, so no user text is read as tsquery syntax.
_QUERY_TSQUERY = (
    "SELECT coalesce(string_agg('''' || replace(replace(lexeme, '\\', '\\\\'), '''', '''''') || '''', ' | '), '')"
    "::tsquery AS q FROM unnest(tsvector_to_array(to_tsvector('english', $1::text))) AS lexeme"
)


def table_name(bank: str) -> str:
    return "meshgate_chunks_" + hashlib.sha256(bank.encode()).hexdigest()[:24]


def vector_text(vector: np.ndarray[Any, Any]) -> str:
    """pgvector's text form, `[x,y,...]`, with float32 precision (repr of each value round-trips)."""
    return "[" + ",".join(repr(float(value)) for value in vector) + "]"


class _Params:
    """Collects values for `$n` placeholders."""

    def __init__(self, *initial: Any) -> None:
        self.values: list[Any] = list(initial)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def filter_sql(filters: Filters | None, params: _Params) -> str:
    """` AND (...)` clauses for the filters (semantics of base.matches), values as parameters."""
    if not filters:
        return ""
    clauses = []
    for term in filter_terms(filters):
        parts: list[str] = []
        if term.field == "metadata":
            if term.values:
                parts.append(f"metadata ->> {params.add(term.key)} = ANY({params.add(list(term.values))}::text[])")
            if term.allow_none:
                parts.append(f"NOT (metadata ? {params.add(term.key)})")
        else:
            assert term.field == "page" or term.field in _FIELD_COLUMNS
            if term.values:
                kind = "bigint" if term.field == "page" else "text"
                parts.append(f"{term.field} = ANY({params.add(list(term.values))}::{kind}[])")
            if term.allow_none:
                parts.append(f"{term.field} IS NULL")
        clauses.append("(" + " OR ".join(parts) + ")" if parts else "FALSE")
    return " AND " + " AND ".join(clauses)


def acl_sql(readers: Readers, params: _Params) -> str:
    if readers.all_chunks:
        return ""
    return f" AND acl && {params.add(sorted(readers.tokens))}::text[]"


class PgVectorIndex(ChunkIndex):
    kind = "pgvector"

    def __init__(
        self,
        url: str,
        *,
        max_scan_tuples: int = 100_000,
        ef_search: int = 100,
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        #: PostgreSQL settings for every connection (statement_timeout, application_name...).
        self.server_settings = dict(server_settings or {})
        #: How many rows an HNSW scan may visit looking for k readable, matching rows.
        self.max_scan_tuples = max_scan_tuples
        self.ef_search = ef_search
        self._pool: asyncpg.Pool | None = None
        self._tables: dict[str, tuple[str, int]] = {}

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4, server_settings=self.server_settings)
        try:
            async with pool.acquire() as conn:
                installed = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
                if not installed:
                    try:
                        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    except asyncpg.PostgresError as exc:
                        raise RuntimeError(
                            "the pgvector index needs the `vector` extension in this database "
                            f"(CREATE EXTENSION vector as a superuser): {exc}"
                        ) from exc
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {BANKS_TABLE} ("
                    "name text PRIMARY KEY, table_name text NOT NULL UNIQUE, dimensions integer NOT NULL)"
                )
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the index is not open")
        return self._pool

    async def _table(self, bank: str, conn: asyncpg.Connection | None = None) -> tuple[str, int]:
        """The bank's table and vector size; KeyError when it does not exist."""
        cached = self._tables.get(bank)
        if cached is not None:
            return cached
        query = f"SELECT table_name, dimensions FROM {BANKS_TABLE} WHERE name = $1"
        row = await (conn.fetchrow(query, bank) if conn is not None else self.pool.fetchrow(query, bank))
        if row is None:
            raise KeyError(f"no knowledge bank {bank!r} in the index")
        self._tables[bank] = (row["table_name"], int(row["dimensions"]))
        return self._tables[bank]

    # -- banks ---------------------------------------------------------------------------------

    async def create_bank(self, bank: str, dimensions: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
            row = await conn.fetchrow(f"SELECT dimensions FROM {BANKS_TABLE} WHERE name = $1", bank)
            if row is not None:
                if row["dimensions"] != dimensions:
                    raise ValueError(f"bank {bank!r} exists with {row['dimensions']} dimensions, not {dimensions}")
                return
            table = table_name(bank)
            await conn.execute(
                f"""
                CREATE TABLE {table} (
                    chunk_id text PRIMARY KEY,
                    document_id text NOT NULL,
                    text text NOT NULL,
                    source text NOT NULL,
                    title text NOT NULL,
                    page bigint,
                    section text,
                    start_offset bigint NOT NULL,
                    end_offset bigint NOT NULL,
                    data_class text NOT NULL,
                    format text NOT NULL,
                    acl text[] NOT NULL,
                    metadata jsonb NOT NULL,
                    embedding vector({int(dimensions)}) NOT NULL,
                    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
                );
                CREATE INDEX {table}_document ON {table} (document_id);
                CREATE INDEX {table}_acl ON {table} USING gin (acl);
                CREATE INDEX {table}_tsv ON {table} USING gin (tsv);
                CREATE INDEX {table}_embedding ON {table} USING hnsw (embedding vector_cosine_ops);
                """
            )
            await conn.execute(
                f"INSERT INTO {BANKS_TABLE} (name, table_name, dimensions) VALUES ($1, $2, $3)",
                bank,
                table,
                dimensions,
            )
        self._tables[bank] = (table, dimensions)

    async def drop_bank(self, bank: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
            self._tables.pop(bank, None)
            table = await conn.fetchval(f"DELETE FROM {BANKS_TABLE} WHERE name = $1 RETURNING table_name", bank)
            if table is not None:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")

    # -- writes --------------------------------------------------------------------------------

    async def upsert(self, bank: str, chunks: Sequence[IndexedChunk]) -> None:
        if not chunks:
            return
        table, dimensions = await self._table(bank)
        rows = []
        for item in chunks:
            vector = np.asarray(item.vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != dimensions:
                raise ValueError(f"bank {bank!r} holds {dimensions}-dimensional vectors, not {vector.shape[0]}")
            chunk = item.chunk
            rows.append(
                (
                    chunk.chunk_id,
                    chunk.document_id,
                    chunk.text,
                    chunk.source,
                    chunk.title,
                    chunk.page,
                    chunk.section,
                    chunk.start,
                    chunk.end,
                    chunk.data_class,
                    chunk.format,
                    sorted(set(chunk.acl)),
                    json.dumps(dict(chunk.metadata)),
                    vector_text(vector),
                )
            )
        updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in [*_COLUMNS.split(", ")[1:], "embedding"])
        async with self.pool.acquire() as conn, conn.transaction():  # all or nothing
            await conn.executemany(
                f"INSERT INTO {table} ({_COLUMNS}, embedding) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14::vector) "
                f"ON CONFLICT (chunk_id) DO UPDATE SET {updates}",
                rows,
            )

    async def delete_documents(self, bank: str, document_ids: Sequence[str]) -> int:
        documents = list(dict.fromkeys(document_ids))
        if not documents:
            return 0
        table, _ = await self._table(bank)
        status = await self.pool.execute(f"DELETE FROM {table} WHERE document_id = ANY($1::text[])", documents)
        return int(status.split()[-1])

    async def compact(self) -> None:
        """Rewrite every bank table (VACUUM FULL), so deleted rows leave the table files. PostgreSQL's
        WAL and backups are outside this: see docs/knowledge-indexes.md."""
        tables = [row["table_name"] for row in await self.pool.fetch(f"SELECT table_name FROM {BANKS_TABLE}")]
        async with self.pool.acquire() as conn:
            for table in tables:
                await conn.execute(f"VACUUM FULL {table}")

    # -- reads ---------------------------------------------------------------------------------

    async def count(self, bank: str) -> int:
        table, _ = await self._table(bank)
        return int(await self.pool.fetchval(f"SELECT count(*) FROM {table}"))

    @staticmethod
    def _ref(row: Mapping[str, Any]) -> ChunkRef:
        metadata = row["metadata"]
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        return ChunkRef(
            chunk_id=row["chunk_id"],
            document_id=row["document_id"],
            text=row["text"],
            source=row["source"],
            title=row["title"],
            page=row["page"],
            section=row["section"],
            start=int(row["start_offset"]),
            end=int(row["end_offset"]),
            data_class=row["data_class"],
            format=row["format"],
            acl=tuple(row["acl"]),
            metadata={str(key): str(value) for key, value in metadata.items()},
        )

    async def keyword_search(
        self, bank: str, query: str, readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        params = _Params(query)
        where = acl_sql(readers, params) + filter_sql(filters, params)
        if k <= 0 or not query.strip() or (not readers.all_chunks and not readers.tokens):
            return []
        table, _ = await self._table(bank)
        limit = params.add(k)
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS}, ts_rank_cd(tsv, query.q, 1) AS score FROM {table}, ({_QUERY_TSQUERY}) AS query "
            f"WHERE tsv @@ query.q{where} ORDER BY score DESC, chunk_id LIMIT {limit}",
            *params.values,
        )
        return [Hit(self._ref(row), float(row["score"])) for row in rows]

    async def vector_search(
        self, bank: str, vector: np.ndarray[Any, Any], readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        params = _Params(vector_text(query))
        where = acl_sql(readers, params) + filter_sql(filters, params)
        if k <= 0 or (not readers.all_chunks and not readers.tokens):
            return []
        table, dimensions = await self._table(bank)
        if query.shape[0] != dimensions:
            raise ValueError(f"bank {bank!r} holds {dimensions}-dimensional vectors, not {query.shape[0]}")
        limit = params.add(k)
        async with self.pool.acquire() as conn, conn.transaction():
            # Iterative scan: HNSW keeps going until k rows pass the ACL and filters, in exact order.
            await conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            await conn.execute(f"SET LOCAL hnsw.max_scan_tuples = {int(self.max_scan_tuples)}")
            await conn.execute(f"SET LOCAL hnsw.ef_search = {max(int(self.ef_search), min(int(k), 1000))}")
            rows = await conn.fetch(
                f"SELECT {_COLUMNS}, 1 - (embedding <=> $1::vector) AS score FROM {table} "
                f"WHERE TRUE{where} ORDER BY embedding <=> $1::vector LIMIT {limit}",
                *params.values,
            )
        return [Hit(self._ref(row), float(row["score"])) for row in rows]

    async def chunks_containing(self, bank: str, text: str) -> list[ChunkRef]:
        needle = text.casefold()
        if not needle:
            return []
        table, _ = await self._table(bank)
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM {table} WHERE strpos(lower(text), lower($1)) > 0 ORDER BY chunk_id", text
        )
        return [self._ref(row) for row in rows if needle in row["text"].casefold()]
