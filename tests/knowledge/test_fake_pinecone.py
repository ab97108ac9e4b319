"""The Pinecone fake speaks Pinecone's documented data-plane wire format (camelCase JSON, Api-Key,
`{"code", "message", "details"}` errors, the filter language), and PineconeIndex speaks it too:
version header, ACL inside the query filter, retries on 429/5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from meshgate.knowledge.index.base import ChunkRef, IndexedChunk, Readers
from meshgate.knowledge.index.pinecone import API_VERSION, PineconeError, PineconeIndex
from meshgate.testing.fake_pinecone import FakePinecone, filter_matches

KEY = "pc-wire-key"
DIM = 4


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePinecone]:
    with FakePinecone(dimension=DIM, api_key=KEY) as server:
        yield server


@pytest.fixture
async def http(fake: FakePinecone) -> AsyncIterator[Any]:
    fake.namespaces.clear()
    async with aiohttp.ClientSession(
        base_url=fake.base_url, headers={"Api-Key": KEY, "X-Pinecone-API-Version": API_VERSION}
    ) as session:
        yield session


async def call(session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, path, **kwargs) as response:
        return response.status, await response.json(content_type=None)


def vec(*values: float) -> list[float]:
    return list(values) + [0.0] * (DIM - len(values))


async def seed(session: aiohttp.ClientSession) -> None:
    vectors = [
        {"id": "a", "values": vec(1, 0), "metadata": {"genre": "drama", "year": 2019, "tags": ["x", "y"]}},
        {"id": "b", "values": vec(0.8, 0.6), "metadata": {"genre": "comedy", "year": 2021, "tags": ["y"]}},
        {"id": "c", "values": vec(0, 1), "metadata": {"genre": "drama", "year": 2023}},
        {"id": "d", "values": vec(0.6, 0.8), "sparseValues": {"indices": [7, 9], "values": [0.5, 2.0]}},
    ]
    status, body = await call(session, "POST", "/vectors/upsert", json={"vectors": vectors, "namespace": "ns"})
    assert (status, body) == (200, {"upsertedCount": 4})


async def test_auth_errors_use_pinecones_error_body(fake: FakePinecone) -> None:
    async with aiohttp.ClientSession(base_url=fake.base_url) as session:
        for headers in ({}, {"Api-Key": "wrong"}):
            status, body = await call(session, "POST", "/query", json={"topK": 1, "vector": vec(1)}, headers=headers)
            assert status == 401
            assert body == {"code": 16, "message": "Invalid API Key", "details": []}


async def test_upsert_fetch_stats_round_trip(http: aiohttp.ClientSession) -> None:
    await seed(http)
    status, body = await call(
        http, "GET", "/vectors/fetch", params=[("ids", "a"), ("ids", "d"), ("ids", "zz"), ("namespace", "ns")]
    )
    assert status == 200 and set(body["vectors"]) == {"a", "d"}
    assert body["vectors"]["a"]["metadata"]["tags"] == ["x", "y"]
    assert body["vectors"]["d"]["sparseValues"] == {"indices": [7, 9], "values": [0.5, 2.0]}
    assert body["namespace"] == "ns" and "readUnits" in body["usage"]
    status, body = await call(http, "POST", "/describe_index_stats", json={})
    assert body["namespaces"] == {"ns": {"vectorCount": 4}}
    assert (body["dimension"], body["totalVectorCount"], body["metric"]) == (DIM, 4, "dotproduct")
    status, body = await call(http, "POST", "/describe_index_stats", json={"filter": {"genre": "drama"}})
    assert body["namespaces"]["ns"]["vectorCount"] == 2


async def test_query_scores_orders_and_includes(http: aiohttp.ClientSession) -> None:
    await seed(http)
    status, body = await call(
        http, "POST", "/query", json={"namespace": "ns", "topK": 2, "vector": vec(1, 0), "includeMetadata": True}
    )
    assert status == 200
    assert [m["id"] for m in body["matches"]] == ["a", "b"]
    assert body["matches"][0]["score"] == pytest.approx(1.0)
    assert body["matches"][0]["metadata"]["genre"] == "drama" and body["matches"][0]["values"] == []
    # Hybrid: dense dot product plus sparse dot product.
    status, body = await call(
        http,
        "POST",
        "/query",
        json={"namespace": "ns", "topK": 1, "vector": vec(0, 0), "sparseVector": {"indices": [9], "values": [1.0]}},
    )
    assert body["matches"][0]["id"] == "d" and body["matches"][0]["score"] == pytest.approx(2.0)
    status, body = await call(http, "POST", "/query", json={"namespace": "other", "topK": 3, "vector": vec(1)})
    assert (status, body["matches"]) == (200, [])


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"topK": 0, "vector": [1, 0, 0, 0]}, "topK"),
        ({"topK": 5000, "vector": [1, 0, 0, 0], "includeMetadata": True}, "at most 1000"),
        ({"topK": 1, "vector": [1, 0]}, "dimension 2 does not match"),
        ({"topK": 1}, "needs a dense vector"),
        ({"topK": 1, "vector": [1, 0, 0, 0], "top_k": 1}, "unknown field `top_k`"),
        ({"topK": 1, "vector": [1, 0, 0, 0], "filter": {"genre": {"$regex": "d.*"}}}, "unknown operator $regex"),
        ({"topK": 1, "vector": [1, 0, 0, 0], "filter": {"year": {"$gt": "2020"}}}, "$gt takes a number"),
        ({"topK": 1, "vector": [1, 0, 0, 0], "filter": {"genre": {"$in": "drama"}}}, "$in takes an array"),
        ({"topK": 1, "vector": [1, 0, 0, 0], "filter": {"$not": {}}}, "unknown operator $not"),
    ],
)
async def test_invalid_queries_are_400(http: aiohttp.ClientSession, request_body: dict[str, Any], message: str) -> None:
    status, body = await call(http, "POST", "/query", json=request_body)
    assert status == 400
    assert body["code"] == 3 and message in body["message"] and body["details"] == []


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ({"id": "z", "values": [0, 0, 0, 0]}, "at least one non-zero value"),
        ({"id": "z", "values": [1, 0, 0, 0], "metadata": {"k": None}}, "must be a string, number"),
        ({"id": "z", "values": [1, 0, 0, 0], "metadata": {"k": {"nested": 1}}}, "must be a string, number"),
        ({"id": "z", "values": [1, 0, 0, 0], "metadata": {"k": "x" * 41000}}, "Metadata size exceeds"),
        ({"id": "z", "values": [1, 0, 0, 0], "sparseValues": {"indices": [1, 1], "values": [1, 2]}}, "unique"),
        ({"id": "z", "values": [1, 0, 0, 0], "sparse_values": {"indices": [1], "values": [1]}}, "unknown field"),
    ],
)
async def test_invalid_upserts_are_400_and_write_nothing(
    http: aiohttp.ClientSession, fake: FakePinecone, vector: dict[str, Any], message: str
) -> None:
    good = {"id": "ok", "values": [1, 0, 0, 0]}
    status, body = await call(http, "POST", "/vectors/upsert", json={"vectors": [good, vector], "namespace": "w"})
    assert status == 400 and message in body["message"]
    assert "w" not in fake.namespaces or not fake.namespaces["w"]


FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"genre": "drama"}, {"a", "c"}),
    ({"genre": {"$eq": "comedy"}}, {"b"}),
    ({"genre": {"$ne": "drama"}}, {"b", "d"}),  # a record without the field is "not equal"
    ({"genre": {"$in": ["comedy", "horror"]}}, {"b"}),
    ({"genre": {"$nin": ["comedy"]}}, {"a", "c", "d"}),
    ({"year": {"$gt": 2019}}, {"b", "c"}),
    ({"year": {"$gte": 2019, "$lt": 2023}}, {"a", "b"}),
    ({"year": {"$lte": 2021}}, {"a", "b"}),
    ({"tags": "x"}, {"a"}),  # a list value matches when an element does
    ({"tags": {"$in": ["y", "q"]}}, {"a", "b"}),
    ({"tags": {"$nin": ["x"]}}, {"b", "c", "d"}),
    ({"genre": {"$exists": False}}, {"d"}),
    ({"$or": [{"genre": "comedy"}, {"year": 2023}]}, {"b", "c"}),
    ({"$and": [{"genre": "drama"}, {"year": {"$lt": 2020}}]}, {"a"}),
    ({"genre": "drama", "year": 2023}, {"c"}),
]


@pytest.mark.parametrize(("flt", "expected"), FILTERS)
async def test_filter_operators(http: aiohttp.ClientSession, flt: dict[str, Any], expected: set[str]) -> None:
    await seed(http)
    status, body = await call(
        http, "POST", "/query", json={"namespace": "ns", "topK": 10, "vector": vec(1, 1), "filter": flt}
    )
    assert status == 200
    assert {m["id"] for m in body["matches"]} == expected


def test_filter_semantics_directly() -> None:
    assert filter_matches({"acl": ["team:a", "user:b"]}, {"acl": {"$in": ["user:b"]}})
    assert not filter_matches({"acl": ["team:a"]}, {"acl": {"$in": ["user:b"]}})
    assert not filter_matches({}, {"acl": {"$in": ["user:b"]}})


async def test_delete_variants(http: aiohttp.ClientSession, fake: FakePinecone) -> None:
    await seed(http)
    assert await call(http, "POST", "/vectors/delete", json={"ids": ["a"], "namespace": "ns"}) == (200, {})
    assert await call(http, "POST", "/vectors/delete", json={"filter": {"genre": "drama"}, "namespace": "ns"}) == (
        200,
        {},
    )
    assert set(fake.namespaces["ns"]) == {"b", "d"}
    status, body = await call(
        http, "POST", "/vectors/delete", json={"ids": ["b"], "deleteAll": True, "namespace": "ns"}
    )
    assert status == 400 and "Exactly one" in body["message"]
    assert await call(http, "POST", "/vectors/delete", json={"deleteAll": True, "namespace": "ns"}) == (200, {})
    status, body = await call(http, "POST", "/describe_index_stats", json={})
    assert body["namespaces"] == {}
    status, body = await call(http, "POST", "/vectors/delete", json={"ids": ["x"], "namespace": "nope"})
    assert status == 404 and body["code"] == 5
    status, _ = await call(http, "DELETE", "/namespaces/ns")
    assert status == 200
    status, _ = await call(http, "DELETE", "/namespaces/ns")
    assert status == 404


async def test_list_and_fetch_by_metadata_paginate(http: aiohttp.ClientSession) -> None:
    vectors = [{"id": f"v{i:02d}", "values": vec(1, i), "metadata": {"even": i % 2 == 0}} for i in range(25)]
    await call(http, "POST", "/vectors/upsert", json={"vectors": vectors, "namespace": "p"})
    seen: list[str] = []
    token = None
    while True:
        params = [("namespace", "p"), ("limit", "10")] + ([("paginationToken", token)] if token else [])
        status, body = await call(http, "GET", "/vectors/list", params=params)
        seen += [item["id"] for item in body["vectors"]]
        token = (body.get("pagination") or {}).get("next")
        if not token:
            break
    assert seen == [f"v{i:02d}" for i in range(25)]
    status, body = await call(http, "GET", "/vectors/list", params=[("namespace", "p"), ("prefix", "v1")])
    assert [item["id"] for item in body["vectors"]] == [f"v1{i}" for i in range(10)]
    found: list[str] = []
    request: dict[str, Any] = {"namespace": "p", "filter": {"even": True}, "limit": 5}
    while True:
        status, body = await call(http, "POST", "/vectors/fetch_by_metadata", json=request)
        assert status == 200
        found += sorted(body["vectors"])
        if "pagination" not in body:
            break
        request["paginationToken"] = body["pagination"]["next"]
    assert found == [f"v{i:02d}" for i in range(0, 25, 2)]


async def test_injected_failures_use_the_error_body(http: aiohttp.ClientSession, fake: FakePinecone) -> None:
    fake.fail_next(429, retry_after=1)
    async with http.post("/query", json={"topK": 1, "vector": vec(1)}) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        body = await response.json()
    assert body["code"] == 8 and body["details"] == []
    fake.fail_next(503)
    status, body = await call(http, "POST", "/describe_index_stats", json={})
    assert status == 503 and body["code"] == 14


def item(chunk_id: str, text: str, acl: tuple[str, ...], vector: list[float]) -> IndexedChunk:
    ref = ChunkRef(
        chunk_id=chunk_id, document_id="doc", text=text, source="s", title="t", acl=acl, metadata={"lang": "en"}
    )
    return IndexedChunk(ref, np.array(vector, dtype=np.float32))


async def test_client_sends_the_documented_requests(fake: FakePinecone) -> None:
    fake.namespaces.clear()
    index = PineconeIndex(fake.base_url, KEY, namespace_prefix="kb-", backoff=0.01)
    await index.open()
    try:
        await index.create_bank("docs", DIM)
        await index.upsert("docs", [item("c1", "Orbital mechanics notes", ("team:a",), vec(1))])
        fake.requests.clear()
        hits = await index.vector_search(
            "docs", np.array(vec(1), dtype=np.float32), Readers.of("team:a"), 3, {"metadata.lang": "en"}
        )
        assert [hit.chunk.chunk_id for hit in hits] == ["c1"] and hits[0].chunk.metadata == {"lang": "en"}
        (sent,) = fake.requests
        assert (sent.method, sent.path) == ("POST", "/query")
        assert sent.headers["Api-Key"] == KEY and sent.headers["X-Pinecone-API-Version"] == API_VERSION
        assert sent.body["namespace"] == "kb-docs" and sent.body["topK"] == 3 and sent.body["includeMetadata"] is True
        # The ACL is part of the query itself.
        assert sent.body["filter"] == {"$and": [{"acl": {"$in": ["team:a"]}}, {"m_lang": {"$in": ["en"]}}]}
        stored = fake.namespaces["kb-docs"]["c1"]
        assert stored.metadata["text"] == "Orbital mechanics notes" and stored.metadata["acl"] == ["team:a"]
        assert "page" not in stored.metadata and stored.sparse is not None  # no nulls; BM25 terms
        assert await index.keyword_search("docs", "orbital", Readers.of("team:b"), 3) == []
        # The IDF statistics, built by the first keyword search, follow this object's own writes.
        assert [h.chunk.chunk_id for h in await index.keyword_search("docs", "orbital", Readers.of("team:a"), 3)] == [
            "c1"
        ]
        await index.upsert("docs", [item("c2", "Lunar gravity assists", ("team:a",), vec(0, 1))])
        lunar = await index.keyword_search("docs", "lunar", Readers.of("team:a"), 3)
        assert [h.chunk.chunk_id for h in lunar] == ["c2"] and lunar[0].score > 0
        assert await index.delete_documents("docs", ["doc"]) == 2
        assert await index.keyword_search("docs", "lunar", Readers.of("team:a"), 3) == []
        await index.upsert("docs", [item("c1", "Orbital mechanics notes", ("team:a",), vec(1))])

        # 429 and 5xx are retried; a persistent failure surfaces with Pinecone's message.
        fake.fail_next(429, times=2)
        assert await index.count("docs") == 1
        fake.fail_next(500, times=10)
        with pytest.raises(PineconeError) as raised:
            await index.count("docs")
        assert raised.value.status == 500 and raised.value.code == 2
        fake.failures.clear()
        bad = PineconeIndex(fake.base_url, "not-the-key")
        await bad.open()
        with pytest.raises(PineconeError) as raised:
            await bad.count("docs")
        assert raised.value.status == 401 and raised.value.message == "Invalid API Key"
        await bad.close()
    finally:
        await index.close()
