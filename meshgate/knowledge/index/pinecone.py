"""The Pinecone chunk index: Pinecone's data-plane REST API (version API_VERSION) over aiohttp.

One Pinecone index (a *dense* index with the `dotproduct` metric, so it also takes sparse values)
serves every bank; a bank is a namespace (`namespace_prefix` + bank name). Each record is a chunk:
its id is the chunk id, `values` its unit vector (dot product = cosine), `sparseValues` its BM25
document side (index/sparse.py), and its metadata every ChunkRef field, the chunk text included
(user metadata under `m_<key>`, so no user key can collide with ours).

- ACLs are inside the query: `filter` always holds `{"acl": {"$in": [...reader tokens...]}}`
  (a record matches when its `acl` list shares a token), so `topK` counts only readable records.
- Filters are Pinecone filter objects (`$in`, `$exists`, `$or`, `$and`): values travel as JSON
  values, never as syntax.
- Keywords: a query with `sparseVector` (the query terms' IDF, from document frequencies this
  object keeps per bank) and a zero dense vector, so the score is the sparse dot product = BM25 with
  a fixed average length. The frequencies are rebuilt by reading the whole namespace the first time
  a bank is searched and every `stats_ttl` seconds after, and updated by this object's own writes;
  writes of other processes change the IDF only at the next rebuild (ranking drifts a little, the
  ACL never does).
- Deleting a document fetches its records by metadata (`/vectors/fetch_by_metadata`) to count them
  and keep the frequencies right, then deletes them by id.
- `chunks_containing` reads the namespace (list ids, fetch in batches) and checks each text: Pinecone
  has no substring search. Erasure is rare; this is O(records in the bank).

Retries: 429 and 5xx answers are retried with exponential backoff (Retry-After honoured when sent);
other errors raise PineconeError with Pinecone's `{"code", "message", "details"}` body.
Pinecone is eventually consistent: a write may take a moment to be visible to queries and
describe_index_stats (the fake used in tests is immediate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np

from meshgate.knowledge.index import sparse
from meshgate.knowledge.index.base import (
    ChunkIndex,
    ChunkRef,
    Filters,
    Hit,
    IndexedChunk,
    Readers,
    filter_terms,
)

API_VERSION = "2025-10"
#: Records per upsert request (Pinecone allows 1000 and 2 MB; chunk texts ride in metadata).
UPSERT_BATCH = 100
#: Ids per fetch (they travel in the URL) and per delete request.
FETCH_BATCH = 100
DELETE_BATCH = 1000
#: Pinecone's limit on one record's metadata.
MAX_METADATA_BYTES = 40960
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Payloads larger than this are encoded/decoded on a thread, not on the event loop.
_INLINE_JSON = 64 * 1024
_FIELDS = ("document_id", "text", "source", "title", "start", "end", "data_class", "format", "acl")
_META_PREFIX = "m_"
#: Pinecone's name for the namespace with no name.
DEFAULT_NAMESPACE = "__default__"


class PineconeError(RuntimeError):
    """A Pinecone request failed: its HTTP status and the API's error body."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(f"Pinecone answered HTTP {status}: {message}")
        self.status, self.code, self.message = status, code, message


class _Nothing(Exception):
    """A filter no record can match (so there is no request to send)."""


def _field_key(name: str) -> str:
    return _META_PREFIX + name[len("metadata.") :] if name.startswith("metadata.") else name


def pinecone_filter(readers: Readers, filters: Filters | None) -> dict[str, Any] | None:
    """The query's Pinecone filter: the ACL and every search filter, AND-ed (None: no filter)."""
    clauses: list[dict[str, Any]] = []
    if not readers.all_chunks:
        if not readers.tokens:
            raise _Nothing
        clauses.append({"acl": {"$in": sorted(readers.tokens)}})
    for term in filter_terms(filters):
        key = _field_key(term.field if term.key is None else f"metadata.{term.key}")
        parts: list[dict[str, Any]] = []
        if term.values:
            parts.append({key: {"$in": list(term.values)}})
        if term.allow_none:
            parts.append({key: {"$exists": False}})
        if not parts:
            raise _Nothing
        clauses.append(parts[0] if len(parts) == 1 else {"$or": parts})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def record_metadata(chunk: ChunkRef) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "document_id": chunk.document_id,
        "text": chunk.text,
        "source": chunk.source,
        "title": chunk.title,
        "start": chunk.start,
        "end": chunk.end,
        "data_class": chunk.data_class,
        "format": chunk.format,
        "acl": sorted(set(chunk.acl)),
    }
    # Pinecone has no null: an absent key is None (`$exists: false` filters for it).
    if chunk.page is not None:
        metadata["page"] = chunk.page
    if chunk.section is not None:
        metadata["section"] = chunk.section
    for key, value in chunk.metadata.items():
        metadata[_META_PREFIX + key] = str(value)
    return metadata


def chunk_from(record_id: str, metadata: Mapping[str, Any]) -> ChunkRef:
    page = metadata.get("page")
    return ChunkRef(
        chunk_id=record_id,
        document_id=str(metadata.get("document_id", "")),
        text=str(metadata.get("text", "")),
        source=str(metadata.get("source", "")),
        title=str(metadata.get("title", "")),
        page=int(page) if page is not None else None,
        section=metadata.get("section"),
        start=int(metadata.get("start", 0)),
        end=int(metadata.get("end", 0)),
        data_class=str(metadata.get("data_class", "internal")),
        format=str(metadata.get("format", "text")),
        acl=tuple(metadata.get("acl") or ()),
        metadata={
            key[len(_META_PREFIX) :]: str(value) for key, value in metadata.items() if key.startswith(_META_PREFIX)
        },
    )


class PineconeIndex(ChunkIndex):
    kind = "pinecone"

    def __init__(
        self,
        host: str,
        api_key: str,
        namespace_prefix: str = "",
        *,
        max_retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 30.0,
        stats_ttl: float = 600.0,
    ) -> None:
        self.base_url = (host if "://" in host else f"https://{host}").rstrip("/")
        self._api_key = api_key
        self.namespace_prefix = namespace_prefix
        self.max_retries, self.backoff, self.timeout, self.stats_ttl = max_retries, backoff, timeout, stats_ttl
        self._session: aiohttp.ClientSession | None = None
        self._dimension: int | None = None
        #: Per bank: its document frequencies and when they were rebuilt from the store.
        self._stats: dict[str, tuple[sparse.DocumentFrequencies, float]] = {}
        self._stats_locks: dict[str, asyncio.Lock] = {}

    def namespace(self, bank: str) -> str:
        return self.namespace_prefix + bank

    # -- HTTP ----------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Api-Key": self._api_key, "X-Pinecone-API-Version": API_VERSION},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _request(
        self, method: str, path: str, body: Any = None, params: Sequence[tuple[str, str]] | None = None
    ) -> Any:
        if self._session is None:
            raise RuntimeError("the index is not open")
        data = None
        if body is not None:
            data = await _encode(body)
        attempt = 0
        while True:
            async with self._session.request(
                method,
                self.base_url + path,
                data=data,
                params=list(params or ()),
                headers={"Content-Type": "application/json"} if data is not None else None,
            ) as response:
                raw = await response.read()
                if response.status < 300:
                    return await _decode(raw) if raw else {}
                if response.status in RETRY_STATUSES and attempt < self.max_retries:
                    delay = self.backoff * (2**attempt)
                    retry_after = response.headers.get("Retry-After")
                    if retry_after is not None:
                        with contextlib.suppress(ValueError):  # an HTTP date: keep the backoff
                            delay = max(delay, float(retry_after))
                    attempt += 1
                    await asyncio.sleep(min(delay, 30.0))
                    continue
                raise _error(response.status, raw)

    # -- banks ---------------------------------------------------------------------------------

    async def _index_dimension(self) -> int:
        if self._dimension is None:
            stats = await self._request("POST", "/describe_index_stats", {})
            self._dimension = int(stats.get("dimension") or 0)
        return self._dimension

    async def create_bank(self, bank: str, dimensions: int) -> None:
        # A Pinecone namespace exists once it holds a record: only the index's vector size to check.
        index_dimension = await self._index_dimension()
        if index_dimension and index_dimension != dimensions:
            raise ValueError(
                f"the Pinecone index holds {index_dimension}-dimensional vectors; bank {bank!r} wants {dimensions}"
            )

    async def drop_bank(self, bank: str) -> None:
        try:
            await self._request("DELETE", f"/namespaces/{_quote(self.namespace(bank))}")
        except PineconeError as exc:
            if exc.status != 404:  # no such namespace: nothing to drop
                raise
        self._stats.pop(bank, None)

    # -- writes --------------------------------------------------------------------------------

    async def upsert(self, bank: str, chunks: Sequence[IndexedChunk]) -> None:
        if not chunks:
            return
        dimension = await self._index_dimension()
        records = await asyncio.to_thread(_records, chunks, dimension)
        namespace = self.namespace(bank)
        stats = self._stats.get(bank)
        replaced: dict[str, tuple[int, ...]] = {}
        if stats is not None:
            replaced = await self._sparse_of(namespace, [record["id"] for record in records])
        for start in range(0, len(records), UPSERT_BATCH):
            batch = records[start : start + UPSERT_BATCH]
            await self._request("POST", "/vectors/upsert", {"vectors": batch, "namespace": namespace})
        if stats is not None:
            frequencies = stats[0]
            for indices in replaced.values():
                frequencies.remove(indices)
            for record in records:
                frequencies.add(record.get("sparseValues", {}).get("indices", ()))

    async def _sparse_of(self, namespace: str, ids: Sequence[str]) -> dict[str, tuple[int, ...]]:
        """The sparse indices of those of `ids` that exist."""
        found: dict[str, tuple[int, ...]] = {}
        for start in range(0, len(ids), FETCH_BATCH):
            params = [("ids", record_id) for record_id in ids[start : start + FETCH_BATCH]]
            params.append(("namespace", namespace))
            answer = await self._request("GET", "/vectors/fetch", params=params)
            for record_id, record in (answer.get("vectors") or {}).items():
                found[record_id] = tuple((record.get("sparseValues") or {}).get("indices") or ())
        return found

    async def delete_documents(self, bank: str, document_ids: Sequence[str]) -> int:
        documents = list(dict.fromkeys(document_ids))
        if not documents:
            return 0
        namespace = self.namespace(bank)
        found: dict[str, tuple[int, ...]] = {}
        token: str | None = None
        while True:
            body: dict[str, Any] = {
                "namespace": namespace,
                "filter": {"document_id": {"$in": documents}},
                "limit": 1000,
            }
            if token:
                body["paginationToken"] = token
            answer = await self._request("POST", "/vectors/fetch_by_metadata", body)
            for record_id, record in (answer.get("vectors") or {}).items():
                found[record_id] = tuple((record.get("sparseValues") or {}).get("indices") or ())
            token = (answer.get("pagination") or {}).get("next")
            if not token:
                break
        ids = sorted(found)
        for start in range(0, len(ids), DELETE_BATCH):
            await self._request(
                "POST", "/vectors/delete", {"ids": ids[start : start + DELETE_BATCH], "namespace": namespace}
            )
        stats = self._stats.get(bank)
        if stats is not None:
            for indices in found.values():
                stats[0].remove(indices)
        return len(ids)

    # -- reads ---------------------------------------------------------------------------------

    async def count(self, bank: str) -> int:
        stats = await self._request("POST", "/describe_index_stats", {})
        summary = (stats.get("namespaces") or {}).get(self.namespace(bank)) or {}
        return int(summary.get("vectorCount", 0))

    async def _all_ids(self, namespace: str) -> list[str]:
        ids: list[str] = []
        token: str | None = None
        while True:
            params = [("namespace", namespace), ("limit", "100")]
            if token:
                params.append(("paginationToken", token))
            answer = await self._request("GET", "/vectors/list", params=params)
            ids.extend(str(item["id"]) for item in answer.get("vectors") or [])
            token = (answer.get("pagination") or {}).get("next")
            if not token:
                return ids

    async def _scan(self, namespace: str) -> list[dict[str, Any]]:
        """Every record of a namespace (id, metadata, sparse values): O(records), for rare jobs."""
        ids = await self._all_ids(namespace)
        records: list[dict[str, Any]] = []
        for start in range(0, len(ids), FETCH_BATCH):
            params = [("ids", record_id) for record_id in ids[start : start + FETCH_BATCH]]
            params.append(("namespace", namespace))
            answer = await self._request("GET", "/vectors/fetch", params=params)
            records.extend((answer.get("vectors") or {}).values())
        return records

    async def _frequencies(self, bank: str) -> sparse.DocumentFrequencies:
        lock = self._stats_locks.setdefault(bank, asyncio.Lock())
        async with lock:
            cached = self._stats.get(bank)
            if cached is not None and time.monotonic() - cached[1] < self.stats_ttl:
                return cached[0]
            frequencies = sparse.DocumentFrequencies()
            for record in await self._scan(self.namespace(bank)):
                frequencies.add((record.get("sparseValues") or {}).get("indices") or ())
            self._stats[bank] = (frequencies, time.monotonic())
            return frequencies

    async def _query(
        self, bank: str, body: dict[str, Any], readers: Readers, k: int, filters: Filters | None
    ) -> list[Hit]:
        try:
            query_filter = pinecone_filter(readers, filters)
        except _Nothing:
            return []
        if k <= 0:
            return []
        body.update({"namespace": self.namespace(bank), "topK": k, "includeMetadata": True, "includeValues": False})
        if query_filter is not None:
            body["filter"] = query_filter
        answer = await self._request("POST", "/query", body)
        return [
            Hit(chunk_from(str(match["id"]), match.get("metadata") or {}), float(match.get("score", 0.0)))
            for match in answer.get("matches") or []
        ]

    async def keyword_search(
        self, bank: str, query: str, readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        try:
            pinecone_filter(readers, filters)  # an unknown filter field is an error even with no query
        except _Nothing:
            return []
        if k <= 0 or not query.strip():
            return []
        frequencies = await self._frequencies(bank)
        vector = sparse.query_vector(query, frequencies)
        if not vector.indices:
            return []
        dimension = await self._index_dimension()
        # A zero dense part: the score is the sparse dot product alone.
        body = {"vector": [0.0] * dimension, "sparseVector": vector.as_json()}
        hits = await self._query(bank, body, readers, k, filters)
        return [hit for hit in hits if hit.score > 0]

    async def vector_search(
        self, bank: str, vector: np.ndarray[Any, Any], readers: Readers, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        dimension = await self._index_dimension()
        if dimension and query.shape[0] != dimension:
            raise ValueError(f"the Pinecone index holds {dimension}-dimensional vectors, not {query.shape[0]}")
        return await self._query(bank, {"vector": [float(value) for value in query]}, readers, k, filters)

    async def chunks_containing(self, bank: str, text: str) -> list[ChunkRef]:
        needle = text.casefold()
        if not needle:
            return []
        records = await self._scan(self.namespace(bank))
        found = [
            chunk_from(str(record["id"]), record.get("metadata") or {})
            for record in records
            if needle in str((record.get("metadata") or {}).get("text", "")).casefold()
        ]
        return sorted(found, key=lambda chunk: chunk.chunk_id)


def _records(chunks: Sequence[IndexedChunk], dimension: int) -> list[dict[str, Any]]:
    """Upsert records (built on a thread: tokenising and copying vectors grows with the input)."""
    records = []
    for item in chunks:
        vector = np.asarray(item.vector, dtype=np.float32).reshape(-1)
        if dimension and vector.shape[0] != dimension:
            raise ValueError(f"the Pinecone index holds {dimension}-dimensional vectors, not {vector.shape[0]}")
        metadata = record_metadata(item.chunk)
        if len(json.dumps(metadata).encode()) > MAX_METADATA_BYTES:
            raise ValueError(
                f"chunk {item.chunk.chunk_id!r}: text and metadata exceed Pinecone's {MAX_METADATA_BYTES} bytes"
            )
        record: dict[str, Any] = {
            "id": item.chunk.chunk_id,
            "values": [float(value) for value in vector],
            "metadata": metadata,
        }
        terms = sparse.document_vector(item.chunk.text)
        if terms.indices:
            record["sparseValues"] = terms.as_json()
        records.append(record)
    return records


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment or DEFAULT_NAMESPACE, safe="")


def _error(status: int, raw: bytes) -> PineconeError:
    code: int | None = None
    message = raw.decode(errors="replace").strip() or f"HTTP {status}"
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code") if isinstance(body.get("code"), int) else None
        message = str(body.get("message") or message)
    elif isinstance(body, str):
        message = body
    return PineconeError(status, code, message)


async def _encode(body: Any) -> bytes:
    if isinstance(body, dict) and len(body.get("vectors") or ()) > 8:
        return await asyncio.to_thread(lambda: json.dumps(body).encode())
    return json.dumps(body).encode()


async def _decode(raw: bytes) -> Any:
    if len(raw) > _INLINE_JSON:
        return await asyncio.to_thread(json.loads, raw)
    return json.loads(raw)
