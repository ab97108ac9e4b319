"""The embedded chunk index: one SQLite file for every bank, FTS5 for BM25, vectors scanned in memory.

Layout (one file, WAL mode, `secure_delete` on every connection):
- `banks`: name, dimensions and a **generation** bumped by every write transaction to the bank;
- `chunks`: every ChunkRef field, the ACL set id, the vector (float32 blob) and the generation that
  wrote the row; `chunk_metadata` holds metadata as rows so filters run in SQL;
- `acl_sets`/`acl_tokens`: each distinct ACL once, its tokens as rows: a search joins on them, so
  `LIMIT k` counts only readable chunks;
- `fts_<bank id>`: one FTS5 table per bank (BM25 statistics are the bank's own), external content
  (the text is stored once, in `chunks`), porter stemming over unicode61;
- `tombstones`: ids of removed chunks and the generation that removed them (ids only, no content),
  so a process holding a bank's vectors in memory can catch up with another process's writes by
  reading what changed since its generation instead of reloading the whole bank.

Keyword search ranks with FTS5's bm25() inside one SQL statement joined on the ACL (and filters);
FTS5 scores every chunk an OR query matches, so at large banks the most common query words are
left out past a budget of matches (see `_within_budget`; exact up to about 10k chunks).

Vector search is a brute-force dot product over the bank's matrix (float32, rows swapped out on
delete so no copy of the matrix is made per write); unreadable and filtered-out rows are masked to
-inf *before* the top-k is taken. Each search first reads the bank's generation (one indexed row) and
applies any newer changes, so another process's writes are visible to the next search.

Threads: one writer connection on a one-thread executor; reader connections, one per reader thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
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

#: Threads (each with its own connection) that run searches.
READER_THREADS = 2
#: FTS5 `secure-delete` (deleted terms overwritten at once) needs SQLite 3.42; before that, compact()
#: merges the full-text index (`optimize`), which drops deleted entries, and secure_delete zeroes
#: the freed pages.
FTS_SECURE_DELETE = sqlite3.sqlite_version_info >= (3, 42, 0)
TOKENIZER = "porter unicode61 remove_diacritics 2"
#: At most this many chunk matches (summed over query words) are scored per keyword search.
KEYWORD_POSTINGS_BUDGET = 10_000
#: How long document frequencies learnt for the budget are reused after the bank changed.
FREQUENCIES_TTL_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS banks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    dimensions INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    -- Tombstones at or below this generation were pruned: a reader older than it reloads the bank.
    tombstone_floor INTEGER NOT NULL DEFAULT 0,
    -- Rows were deleted since the last compact (the full-text index still holds their entries).
    dirty INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS acl_sets (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS acl_tokens (
    token TEXT NOT NULL, set_id INTEGER NOT NULL, PRIMARY KEY (token, set_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bank_id INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    title TEXT NOT NULL,
    page INTEGER,
    section TEXT,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    data_class TEXT NOT NULL,
    format TEXT NOT NULL,
    acl_set INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    generation INTEGER NOT NULL,
    UNIQUE (bank_id, chunk_id)
);
-- The ACL set of each chunk, narrow: a keyword search looks it up for every chunk it matches, and the
-- wide chunks rows (text, vector) would make each look-up read pages of their own.
CREATE TABLE IF NOT EXISTS chunk_acl (id INTEGER PRIMARY KEY, acl_set INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks (bank_id, document_id);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks (bank_id, source);
CREATE INDEX IF NOT EXISTS chunks_generation ON chunks (bank_id, generation);
CREATE TABLE IF NOT EXISTS chunk_metadata (
    chunk INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (chunk, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (bank_id INTEGER NOT NULL, chunk INTEGER NOT NULL, generation INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_bank ON tombstones (bank_id, generation);
"""

_COLUMNS = (
    'id, chunk_id, document_id, text, source, title, page, section, start, "end", data_class, format, acl_set, metadata'
)


def _connect(path: Path, reader: bool = False) -> sqlite3.Connection:
    # Autocommit: transactions are explicit (BEGIN IMMEDIATE for writes), so a reader never holds a
    # snapshot open between calls (which would keep a WAL checkpoint from truncating).
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA mmap_size=1073741824")
    if reader:
        # Query words pass through a temp table (to learn their stems): it must never touch disk.
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(f"CREATE VIRTUAL TABLE temp.query_words USING fts5(word, tokenize='{TOKENIZER}')")
        conn.execute("CREATE VIRTUAL TABLE temp.query_stems USING fts5vocab(temp, query_words, 'instance')")
    return conn


def _fts(bank_id: int) -> str:
    return f"fts_{int(bank_id)}"


@dataclass
class _Vectors:
    """One bank's vectors in memory: rows [0, size) live; `position` maps chunk row id -> row."""

    bank_id: int
    dimensions: int
    generation: int
    matrix: np.ndarray[Any, Any]
    ids: np.ndarray[Any, Any]
    acl: np.ndarray[Any, Any]
    size: int = 0
    position: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def empty(cls, bank_id: int, dimensions: int, generation: int, capacity: int = 1024) -> _Vectors:
        return cls(
            bank_id,
            dimensions,
            generation,
            np.zeros((capacity, dimensions), dtype=np.float32),
            np.zeros(capacity, dtype=np.int64),
            np.zeros(capacity, dtype=np.int64),
        )

    def remove(self, chunk: int) -> None:
        row = self.position.pop(chunk, None)
        if row is None:
            return
        last = self.size - 1
        if row != last:  # move the last row into the hole: O(1), no copy of the matrix
            moved = int(self.ids[last])
            self.matrix[row] = self.matrix[last]
            self.ids[row] = moved
            self.acl[row] = self.acl[last]
            self.position[moved] = row
        self.size = last

    def add(self, rows: Sequence[tuple[int, int, bytes]]) -> None:
        need = self.size + len(rows)
        if need > len(self.ids):
            capacity = max(need, 2 * len(self.ids))
            matrix = np.zeros((capacity, self.dimensions), dtype=np.float32)
            matrix[: self.size] = self.matrix[: self.size]
            ids = np.zeros(capacity, dtype=np.int64)
            ids[: self.size] = self.ids[: self.size]
            acl = np.zeros(capacity, dtype=np.int64)
            acl[: self.size] = self.acl[: self.size]
            self.matrix, self.ids, self.acl = matrix, ids, acl
        for chunk, acl_set, blob in rows:
            row = self.size
            self.matrix[row] = np.frombuffer(blob, dtype=np.float32)
            self.ids[row] = chunk
            self.acl[row] = acl_set
            self.position[chunk] = row
            self.size += 1


class EmbeddedIndex(ChunkIndex):
    kind = "embedded"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: sqlite3.Connection | None = None
        self._write_pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._vectors: dict[str, _Vectors] = {}
        self._vectors_lock = threading.Lock()
        self._frequencies: dict[str, tuple[int, int, float, dict[str, int]]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="knowledge-write")
        self._read_pool = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="knowledge-read")
        self._writer = await self._write(self._open_writer)

    def _open_writer(self) -> sqlite3.Connection:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o700)
        # Created 0600 before SQLite sees it; SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        conn = _connect(self.path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        return conn

    async def close(self) -> None:
        for pool in (self._read_pool, self._write_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._read_pool = self._write_pool = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._vectors.clear()
        self._frequencies.clear()

    async def _write(self, work: Callable[[], T]) -> T:
        if self._write_pool is None:
            raise RuntimeError("the index is not open")
        return await asyncio.get_running_loop().run_in_executor(self._write_pool, work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_pool is None:
            raise RuntimeError("the index is not open")
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, lambda: work(self._reader()))

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, reader=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs in the writer thread: one IMMEDIATE transaction, all or nothing."""
        conn = self._writer
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # -- banks ---------------------------------------------------------------------------------

    async def create_bank(self, bank: str, dimensions: int) -> None:
        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT dimensions FROM banks WHERE name = ?", (bank,)).fetchone()
            if row is not None:
                if row[0] != dimensions:
                    raise ValueError(f"bank {bank!r} exists with {row[0]} dimensions, not {dimensions}")
                return
            bank_id = conn.execute("INSERT INTO banks (name, dimensions) VALUES (?, ?)", (bank, dimensions)).lastrowid
            assert bank_id is not None
            table = _fts(bank_id)
            conn.execute(
                f"CREATE VIRTUAL TABLE {table} USING fts5(text, content='chunks', content_rowid='id', "
                f"tokenize='{TOKENIZER}')"
            )
            conn.execute(f"CREATE VIRTUAL TABLE {table}_vocab USING fts5vocab({table}, 'row')")
            if FTS_SECURE_DELETE:
                conn.execute(f"INSERT INTO {table} ({table}, rank) VALUES ('secure-delete', 1)")

        await self._write(lambda: self._transaction(work))

    async def drop_bank(self, bank: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT id FROM banks WHERE name = ?", (bank,)).fetchone()
            if row is None:
                return
            bank_id = row[0]
            conn.execute(f"DROP TABLE IF EXISTS {_fts(bank_id)}_vocab")
            conn.execute(f"DROP TABLE IF EXISTS {_fts(bank_id)}")
            conn.execute(
                "DELETE FROM chunk_metadata WHERE chunk IN (SELECT id FROM chunks WHERE bank_id = ?)", (bank_id,)
            )
            conn.execute("DELETE FROM chunk_acl WHERE id IN (SELECT id FROM chunks WHERE bank_id = ?)", (bank_id,))
            conn.execute("DELETE FROM chunks WHERE bank_id = ?", (bank_id,))
            conn.execute("DELETE FROM tombstones WHERE bank_id = ?", (bank_id,))
            conn.execute("DELETE FROM banks WHERE id = ?", (bank_id,))

        await self._write(lambda: self._transaction(work))
        with self._vectors_lock:
            self._vectors.pop(bank, None)
            self._frequencies.pop(bank, None)

    @staticmethod
    def _bank(conn: sqlite3.Connection, bank: str) -> tuple[int, int, int, int]:
        row = conn.execute(
            "SELECT id, dimensions, generation, tombstone_floor FROM banks WHERE name = ?", (bank,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no knowledge bank {bank!r} in the index")
        return row[0], row[1], row[2], row[3]

    # -- writes --------------------------------------------------------------------------------

    async def upsert(self, bank: str, chunks: Sequence[IndexedChunk]) -> None:
        if not chunks:
            return
        await self._write(lambda: self._transaction(lambda conn: self._upsert(conn, bank, chunks)))

    def _upsert(self, conn: sqlite3.Connection, bank: str, chunks: Sequence[IndexedChunk]) -> None:
        bank_id, dimensions, generation, _ = self._bank(conn, bank)
        generation += 1
        table = _fts(bank_id)
        acl_ids: dict[tuple[str, ...], int] = {}
        for item in chunks:
            vector = np.ascontiguousarray(item.vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != dimensions:
                raise ValueError(f"bank {bank!r} holds {dimensions}-dimensional vectors, not {vector.shape[0]}")
            chunk = item.chunk
            acl = tuple(sorted(set(chunk.acl)))
            if acl not in acl_ids:
                acl_ids[acl] = self._acl_set(conn, acl)
            self._remove_chunks(
                conn,
                bank_id,
                table,
                generation,
                conn.execute(
                    "SELECT id, text FROM chunks WHERE bank_id = ? AND chunk_id = ?", (bank_id, chunk.chunk_id)
                ).fetchall(),
            )
            metadata = {str(key): str(value) for key, value in chunk.metadata.items()}
            row_id = conn.execute(
                'INSERT INTO chunks (bank_id, chunk_id, document_id, text, source, title, page, section, start, "end", '
                "data_class, format, acl_set, metadata, vector, generation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    bank_id,
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
                    acl_ids[acl],
                    json.dumps(metadata, ensure_ascii=False),
                    vector.tobytes(),
                    generation,
                ),
            ).lastrowid
            conn.execute("INSERT INTO chunk_acl (id, acl_set) VALUES (?, ?)", (row_id, acl_ids[acl]))
            conn.execute(f"INSERT INTO {table} (rowid, text) VALUES (?, ?)", (row_id, chunk.text))
            if metadata:
                conn.executemany(
                    "INSERT INTO chunk_metadata (chunk, key, value) VALUES (?, ?, ?)",
                    [(row_id, key, value) for key, value in metadata.items()],
                )
        conn.execute("UPDATE banks SET generation = ? WHERE id = ?", (generation, bank_id))

    @staticmethod
    def _acl_set(conn: sqlite3.Connection, acl: tuple[str, ...]) -> int:
        key = "\n".join(acl)
        row = conn.execute("SELECT id FROM acl_sets WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return int(row[0])
        set_id = conn.execute("INSERT INTO acl_sets (key) VALUES (?)", (key,)).lastrowid
        assert set_id is not None
        conn.executemany("INSERT INTO acl_tokens (token, set_id) VALUES (?, ?)", [(token, set_id) for token in acl])
        return set_id

    @staticmethod
    def _remove_chunks(
        conn: sqlite3.Connection, bank_id: int, table: str, generation: int, rows: Sequence[tuple[int, str]]
    ) -> None:
        """Removes chunk rows with their full-text entries (an external-content FTS5 table needs the
        old text to delete them) and metadata, leaving tombstones (ids only)."""
        if not rows:
            return
        conn.executemany(f"INSERT INTO {table} ({table}, rowid, text) VALUES ('delete', ?, ?)", rows)
        ids = [(row_id,) for row_id, _ in rows]
        conn.executemany("DELETE FROM chunk_metadata WHERE chunk = ?", ids)
        conn.executemany("DELETE FROM chunk_acl WHERE id = ?", ids)
        conn.executemany("DELETE FROM chunks WHERE id = ?", ids)
        conn.executemany(
            "INSERT INTO tombstones (bank_id, chunk, generation) VALUES (?, ?, ?)",
            [(bank_id, row_id, generation) for row_id, _ in rows],
        )
        conn.execute("UPDATE banks SET dirty = 1 WHERE id = ?", (bank_id,))

    async def delete_documents(self, bank: str, document_ids: Sequence[str]) -> int:
        documents = list(dict.fromkeys(document_ids))
        if not documents:
            return 0

        def work(conn: sqlite3.Connection) -> int:
            bank_id, _, generation, _ = self._bank(conn, bank)
            generation += 1
            rows: list[tuple[int, str]] = []
            for document in documents:
                rows.extend(
                    conn.execute(
                        "SELECT id, text FROM chunks WHERE bank_id = ? AND document_id = ?", (bank_id, document)
                    ).fetchall()
                )
            self._remove_chunks(conn, bank_id, _fts(bank_id), generation, rows)
            conn.execute("UPDATE banks SET generation = ? WHERE id = ?", (generation, bank_id))
            return len(rows)

        return await self._write(lambda: self._transaction(work))

    async def compact(self) -> None:
        def work() -> None:
            conn = self._writer
            assert conn is not None

            def merge(conn: sqlite3.Connection) -> None:
                for bank_id, generation in conn.execute("SELECT id, generation FROM banks WHERE dirty = 1").fetchall():
                    table = _fts(bank_id)
                    # Merging every segment into one drops the entries of deleted rows for good.
                    conn.execute(f"INSERT INTO {table} ({table}) VALUES ('optimize')")
                    conn.execute("DELETE FROM tombstones WHERE bank_id = ?", (bank_id,))
                    conn.execute("UPDATE banks SET dirty = 0, tombstone_floor = ? WHERE id = ?", (generation, bank_id))

            self._transaction(merge)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await self._write(work)

    # -- reads ---------------------------------------------------------------------------------

    async def count(self, bank: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            bank_id = self._bank(conn, bank)[0]
            return int(conn.execute("SELECT count(*) FROM chunks WHERE bank_id = ?", (bank_id,)).fetchone()[0])

        return await self._read(work)

    @staticmethod
    def _refs(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, ChunkRef]:
        refs: dict[int, ChunkRef] = {}
        if not ids:
            return refs
        marks = ",".join("?" * len(ids))
        rows = conn.execute(f"SELECT {_COLUMNS} FROM chunks WHERE id IN ({marks})", list(ids)).fetchall()
        acl_keys = {
            set_id: tuple(key.split("\n")) if key else ()
            for set_id, key in conn.execute(
                f"SELECT id, key FROM acl_sets WHERE id IN ({','.join('?' * len(rows))})", [row[12] for row in rows]
            ).fetchall()
        }
        for row in rows:
            refs[row[0]] = ChunkRef(
                chunk_id=row[1],
                document_id=row[2],
                text=row[3],
                source=row[4],
                title=row[5],
                page=row[6],
                section=row[7],
                start=row[8],
                end=row[9],
                data_class=row[10],
                format=row[11],
                acl=acl_keys.get(row[12], ()),
                metadata=json.loads(row[13]),
            )
        return refs

    @staticmethod
    def _filter_sql(filters: Filters | None) -> tuple[str, list[Any]]:
        """SQL conditions on `chunks c` with base.matches' semantics (a list means any of)."""
        if not filters:
            return "", []
        clauses: list[str] = []
        params: list[Any] = []
        for term in filter_terms(filters):
            parts = []
            if term.field == "metadata":
                if term.values:
                    parts.append(
                        "EXISTS (SELECT 1 FROM chunk_metadata m WHERE m.chunk = c.id AND m.key = ? "
                        f"AND m.value IN ({','.join('?' * len(term.values))}))"
                    )
                    params.extend([term.key, *term.values])
                if term.allow_none:
                    parts.append("NOT EXISTS (SELECT 1 FROM chunk_metadata m WHERE m.chunk = c.id AND m.key = ?)")
                    params.append(term.key)
            else:
                column = f'c."{term.field}"'
                if term.values:
                    parts.append(f"{column} IN ({','.join('?' * len(term.values))})")
                    params.extend(term.values)
                if term.allow_none:
                    parts.append(f"{column} IS NULL")
            clauses.append("(" + " OR ".join(parts) + ")" if parts else "0")
        return " AND " + " AND ".join(clauses), params

    @staticmethod
    def _acl_sql(readers: Readers) -> tuple[str, list[Any]]:
        if readers.all_chunks:
            return "", []
        tokens = sorted(readers.tokens)
        if not tokens:
            return " AND 0", []
        marks = ",".join("?" * len(tokens))
        return f" AND a.acl_set IN (SELECT set_id FROM acl_tokens WHERE token IN ({marks}))", tokens

    async def keyword_search(
        self, bank: str, query: str, readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        words = textnorm.query_terms(query)
        if not words or k <= 0:
            return []
        acl_sql, acl_params = self._acl_sql(readers)
        filter_sql, filter_params = self._filter_sql(filters)

        def work(conn: sqlite3.Connection) -> list[Hit]:
            bank_id, _, generation, _ = self._bank(conn, bank)
            table = _fts(bank_id)
            chosen = self._within_budget(conn, table, words, self._frequencies_of(bank, bank_id, generation))
            if not chosen:
                return []
            expression = " OR ".join(textnorm.quote(word) for word in chosen)
            joins = f" JOIN chunk_acl a ON a.id = {table}.rowid" if acl_sql else ""
            if filter_sql:
                joins += f" JOIN chunks c ON c.id = {table}.rowid"
            # Only ids and scores go through the sort; the rows of the top k are read afterwards.
            scored = conn.execute(
                f"SELECT {table}.rowid, bm25({table}) AS rank FROM {table}{joins} "
                f"WHERE {table} MATCH ?{acl_sql}{filter_sql} ORDER BY rank LIMIT ?",
                [expression, *acl_params, *filter_params, k],
            ).fetchall()
            refs = self._refs(conn, [row[0] for row in scored])
            return [Hit(refs[row_id], -float(rank)) for row_id, rank in scored if row_id in refs]

        return await self._read(work)

    def _frequencies_of(self, bank: str, bank_id: int, generation: int) -> dict[str, int]:
        """The bank's cache of document frequencies per query word: kept while the bank is
        unchanged, and for FREQUENCIES_TTL_S after it changed (they only steer the budget)."""
        now = time.monotonic()
        with self._vectors_lock:
            cached = self._frequencies.get(bank)
            if (
                cached is None
                or cached[0] != bank_id
                or (cached[1] != generation and now - cached[2] > FREQUENCIES_TTL_S)
            ):
                cached = (bank_id, generation, now, {})
                self._frequencies[bank] = cached
            return cached[3]

    @staticmethod
    def _within_budget(conn: sqlite3.Connection, table: str, words: list[str], known: dict[str, int]) -> list[str]:
        """The query words to match: those in the bank, rarest first, while the chunks they match
        (the sum of their document frequencies) stay within KEYWORD_POSTINGS_BUDGET; the rarest word
        is always kept.

        FTS5 scores every chunk an OR query matches before it sorts: a word in half of 100k chunks
        costs tens of milliseconds and adds little (its IDF is near 0). A bank small enough for the
        budget (about 10k chunks and fewer) is searched with every word, exactly."""
        unknown = [word for word in words if word not in known]
        if unknown:
            # The index holds stems: the query words go through the same tokenizer to learn theirs.
            conn.execute("DELETE FROM temp.query_words")
            conn.executemany("INSERT INTO temp.query_words (rowid, word) VALUES (?, ?)", list(enumerate(unknown, 1)))
            stems: dict[int, list[str]] = {}
            for term, row in conn.execute("SELECT term, doc FROM temp.query_stems"):
                stems.setdefault(row, []).append(term)
            conn.execute("DELETE FROM temp.query_words")
            for row, word in enumerate(unknown, 1):
                counts = []
                for term in stems.get(row, []):
                    # fts5vocab counts by walking the term's doclist: worth caching for common words.
                    found = conn.execute(f"SELECT doc FROM {table}_vocab WHERE term = ?", (term,)).fetchone()
                    counts.append(found[0] if found else 0)
                known[word] = min(counts, default=0)
        frequency = {word: known[word] for word in words if known[word] > 0}
        chosen: list[str] = []
        total = 0
        for word in sorted(frequency, key=frequency.__getitem__):
            if chosen and total + frequency[word] > KEYWORD_POSTINGS_BUDGET:
                break
            chosen.append(word)
            total += frequency[word]
        return chosen

    def _current(self, conn: sqlite3.Connection, bank: str) -> _Vectors:
        """The bank's vectors, caught up with the file (another process may have written to it).
        Called with no bank lock held; returns the state, whose lock the caller takes."""
        with self._vectors_lock:
            state = self._vectors.get(bank)
            if state is None:
                state = _Vectors.empty(-1, 1, -1)
                self._vectors[bank] = state
        with state.lock:
            conn.execute("BEGIN")  # one snapshot for the generation and the rows it covers
            try:
                bank_id, dimensions, generation, floor = self._bank(conn, bank)
                if state.bank_id != bank_id or state.generation < floor or state.dimensions != dimensions:
                    fresh = _Vectors.empty(bank_id, dimensions, generation)
                    fresh.add(
                        conn.execute(
                            "SELECT id, acl_set, vector FROM chunks WHERE bank_id = ? ORDER BY id", (bank_id,)
                        ).fetchall()
                    )
                    state.bank_id, state.dimensions, state.generation = bank_id, dimensions, generation
                    state.matrix, state.ids, state.acl = fresh.matrix, fresh.ids, fresh.acl
                    state.size, state.position = fresh.size, fresh.position
                elif state.generation != generation:
                    since = state.generation
                    for (chunk,) in conn.execute(
                        "SELECT chunk FROM tombstones WHERE bank_id = ? AND generation > ?", (bank_id, since)
                    ):
                        state.remove(chunk)
                    changed = conn.execute(
                        "SELECT id, acl_set, vector FROM chunks WHERE bank_id = ? AND generation > ? ORDER BY id",
                        (bank_id, since),
                    ).fetchall()
                    for chunk, _, _ in changed:
                        state.remove(chunk)
                    state.add(changed)
                    state.generation = generation
            finally:
                conn.execute("COMMIT")
        return state

    async def vector_search(
        self, bank: str, vector: np.ndarray[Any, Any], readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if k <= 0 or (not readers.all_chunks and not readers.tokens):
            return []
        filter_sql, filter_params = self._filter_sql(filters)

        def work(conn: sqlite3.Connection) -> list[Hit]:
            state = self._current(conn, bank)
            readable: np.ndarray[Any, Any] | None = None
            if not readers.all_chunks:
                tokens = sorted(readers.tokens)
                readable = np.array(
                    [
                        row[0]
                        for row in conn.execute(
                            f"SELECT DISTINCT set_id FROM acl_tokens WHERE token IN ({','.join('?' * len(tokens))})",
                            tokens,
                        )
                    ],
                    dtype=np.int64,
                )
            allowed: np.ndarray[Any, Any] | None = None
            if filter_sql:
                allowed = np.array(
                    [
                        row[0]
                        for row in conn.execute(
                            f"SELECT c.id FROM chunks c WHERE c.bank_id = ?{filter_sql}",
                            [state.bank_id, *filter_params],
                        )
                    ],
                    dtype=np.int64,
                )
            with state.lock:
                if query.shape[0] != state.dimensions:
                    raise ValueError(
                        f"bank {bank!r} holds {state.dimensions}-dimensional vectors, not {query.shape[0]}"
                    )
                size = state.size
                scores = state.matrix[:size] @ query
                if readable is not None:
                    scores[~np.isin(state.acl[:size], readable)] = -np.inf
                if allowed is not None:
                    scores[~np.isin(state.ids[:size], allowed)] = -np.inf
                top = _top(scores, k)
                picked = [(int(state.ids[row]), float(scores[row])) for row in top]
            refs = self._refs(conn, [chunk for chunk, _ in picked])
            return [Hit(refs[chunk], score) for chunk, score in picked if chunk in refs]

        return await self._read(work)

    async def chunks_containing(self, bank: str, text: str) -> list[ChunkRef]:
        needle = text.casefold()
        if not needle:
            return []
        expression = textnorm.match_all(textnorm.whole_words(text))

        def work(conn: sqlite3.Connection) -> list[ChunkRef]:
            bank_id = self._bank(conn, bank)[0]
            table = _fts(bank_id)
            # Narrow by the words the text surely contains whole; verify as a substring either way.
            rows: Iterable[tuple[int, str]]
            if expression is not None:
                rows = conn.execute(
                    f"SELECT c.id, c.text FROM {table} JOIN chunks c ON c.id = {table}.rowid WHERE {table} MATCH ?",
                    (expression,),
                )
            else:
                rows = conn.execute("SELECT id, text FROM chunks WHERE bank_id = ?", (bank_id,))
            found = [row_id for row_id, body in rows if needle in body.casefold()]
            refs = self._refs(conn, found)
            return [refs[row_id] for row_id in found if row_id in refs]

        return await self._read(work)


def _top(scores: np.ndarray[Any, Any], k: int) -> list[int]:
    """Indices of the k best finite scores, best first."""
    if scores.shape[0] == 0:
        return []
    size = scores.shape[0]
    candidates = np.argpartition(-scores, k - 1)[:k] if k < size else np.arange(size)
    ordered = candidates[np.argsort(-scores[candidates], kind="stable")]
    return [int(row) for row in ordered if np.isfinite(scores[row])]
