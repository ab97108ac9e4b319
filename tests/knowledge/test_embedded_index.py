"""The embedded chunk index on real SQLite files: ACLs and filters inside the query, FTS5 syntax
safety, replacement, erasure down to the file bytes, another process's writes, restarts."""

from __future__ import annotations

import asyncio
import os
import random
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from meshgate.knowledge import text as textnorm
from meshgate.knowledge.index.base import ChunkRef, IndexedChunk, Readers, matches
from meshgate.knowledge.index.embedded import EmbeddedIndex

ROOT = Path(__file__).resolve().parents[2]
DIMS = 16


def unit(rng: np.random.Generator) -> np.ndarray:
    vector = rng.standard_normal(DIMS).astype(np.float32)
    return vector / np.linalg.norm(vector)


def chunk(i: int, text: str, rng: np.random.Generator, **fields: object) -> IndexedChunk:
    values: dict[str, object] = {
        "chunk_id": f"c{i}",
        "document_id": f"d{i // 2}",
        "text": text,
        "source": f"docs/file{i // 2}.md",
        "title": f"File {i // 2}",
        **fields,
    }
    return IndexedChunk(ChunkRef(**values), unit(rng))  # type: ignore[arg-type]


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[EmbeddedIndex]:
    idx = EmbeddedIndex(tmp_path / "knowledge" / "index.sqlite")
    await idx.open()
    await idx.create_bank("docs", DIMS)
    yield idx
    await idx.close()


async def test_fields_survive_a_restart_and_files_are_private(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "knowledge" / "index.sqlite"
    ref = ChunkRef(
        chunk_id="c1",
        document_id="d1",
        text="The turbine blade cooling report",
        source="reports/turbine.pdf",
        title="Turbine report",
        page=3,
        section="Cooling",
        start=120,
        end=152,
        data_class="confidential",
        format="pdf",
        acl=("team:eng", "user:ann"),
        metadata={"lang": "en", "year": "2024"},
    )
    vector = unit(rng)
    first = EmbeddedIndex(path)
    await first.open()
    await first.open()  # idempotent
    await first.create_bank("docs", DIMS)
    await first.create_bank("docs", DIMS)
    with pytest.raises(ValueError):
        await first.create_bank("docs", DIMS + 1)
    await first.upsert("docs", [IndexedChunk(ref, vector)])
    await first.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = EmbeddedIndex(path)
    await again.open()
    try:
        assert await again.count("docs") == 1
        (hit,) = await again.keyword_search("docs", "turbine blades", Readers.of("user:ann"), 5)
        assert hit.chunk == ref and hit.score > 0
        (hit,) = await again.vector_search("docs", vector, Readers.of("team:eng"), 5)
        assert hit.chunk == ref and hit.score == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(ValueError):
            await again.vector_search("docs", vector[:4], Readers.everyone(), 5)
        with pytest.raises(ValueError):
            await again.upsert("docs", [IndexedChunk(ref, vector[:4])])
    finally:
        await again.close()


async def test_acl_is_applied_before_top_k(index: EmbeddedIndex) -> None:
    rng = np.random.default_rng(2)
    query = unit(rng)
    chunks = []
    # 40 chunks only team:b may read, made the best matches for both retrievers...
    for i in range(40):
        close = query + 0.05 * unit(rng)
        chunks.append(
            IndexedChunk(
                ChunkRef(f"b{i}", f"db{i}", "gearbox gearbox gearbox oil", "s", "t", acl=("team:b",)),
                close / np.linalg.norm(close),
            )
        )
    # ...and 6 that team:a may read, weaker matches.
    for i in range(6):
        acl = ("public",) if i % 2 else ("team:a", "user:z")
        chunks.append(
            IndexedChunk(
                ChunkRef(f"a{i}", f"da{i}", f"the gearbox manual part {i} with many other words", "s", "t", acl=acl),
                unit(rng),
            )
        )
    await index.upsert("docs", chunks)
    reader = Readers.of("team:a", "public")
    keyword = await index.keyword_search("docs", "gearbox", reader, 5)
    vector = await index.vector_search("docs", query, reader, 5)
    for hits in (keyword, vector):
        assert len(hits) == 5
        assert all(hit.chunk.chunk_id.startswith("a") for hit in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(await index.keyword_search("docs", "gearbox", Readers.of("public"), 10)) == 3
    assert await index.keyword_search("docs", "gearbox", Readers(frozenset()), 10) == []
    assert await index.vector_search("docs", query, Readers(frozenset()), 10) == []
    assert len(await index.vector_search("docs", query, Readers.everyone(), 100)) == 46
    assert len(await index.keyword_search("docs", "gearbox", Readers.everyone(), 100)) == 46


async def test_filters_follow_the_reference_semantics(index: EmbeddedIndex) -> None:
    rng = np.random.default_rng(3)
    py = random.Random(3)
    chunks = [
        chunk(
            i,
            f"alpha report {i}",
            rng,
            page=py.choice([None, 1, 2, 3]),
            section=py.choice([None, "Intro", "Results"]),
            format=py.choice(["pdf", "docx"]),
            data_class=py.choice(["public", "internal"]),
            acl=py.choice([("public",), ("team:a",), ("team:b",)]),
            metadata=py.choice([{}, {"lang": "en"}, {"lang": "fr", "year": "2024"}]),
        )
        for i in range(60)
    ]
    await index.upsert("docs", chunks)
    filters_list: list[dict[str, object]] = [
        {"document_id": ["d1", "d2", "d7"]},
        {"page": 2},
        {"page": [None, 3]},
        {"page": "2"},  # a string is not the int 2, as in matches()
        {"section": None},
        {"format": "pdf", "data_class": ["internal"]},
        {"metadata.lang": "fr"},
        {"metadata.lang": [None, "en"]},
        {"metadata.year": "2024", "source": ["docs/file3.md", "docs/file10.md", "docs/file11.md"]},
        {"title": "File 4"},
        {"document_id": []},
    ]
    reader = Readers.of("public", "team:a")
    query = unit(rng)
    for filters in filters_list:
        expected = {c.chunk.chunk_id for c in chunks if matches(c.chunk, filters) and reader.may_read(c.chunk.acl)}
        keyword = await index.keyword_search("docs", "alpha report", reader, 100, filters)
        vector = await index.vector_search("docs", query, reader, 100, filters)
        assert {h.chunk.chunk_id for h in keyword} == expected, filters
        assert {h.chunk.chunk_id for h in vector} == expected, filters
    with pytest.raises(ValueError, match="unknown filter field"):
        await index.keyword_search("docs", "alpha", reader, 5, {"colour": "red"})
    with pytest.raises(ValueError, match="unknown filter field"):
        await index.vector_search("docs", query, reader, 5, {"colour": "red"})


@pytest.mark.parametrize(
    "query",
    [
        'what "is" the (turbine',
        "NEAR(turbine blade, 3)",
        "turbine*",
        "-turbine",
        "title: turbine",
        'turbine" OR "x',
        "AND OR NOT",
        "^turbine + {blade} [x]",
        "turbine_blade's cooling?!",
        "",
        "the of and",
        "日本語 ümlaut café",
    ],
)
async def test_user_text_is_never_fts_syntax(index: EmbeddedIndex, query: str) -> None:
    rng = np.random.default_rng(4)
    await index.upsert("docs", [chunk(0, "Turbine blade cooling and the café near Zürich", rng)])
    hits = await index.keyword_search("docs", query, Readers.of("public"), 5)
    if any(word in query.lower() for word in ("turbine", "café")):
        assert [h.chunk.chunk_id for h in hits] == ["c0"]


def test_query_terms() -> None:
    assert textnorm.query_terms("What is the TURBINE's blade, the blade?") == ["turbine", "blade"]
    assert textnorm.query_terms("the who") == ["the", "who"]  # only stop words: kept
    assert textnorm.match_any('say "hi" (now)') == '"say" OR "hi"'
    assert textnorm.quote('a"b') == '"a""b"'
    assert textnorm.match_any("?!") is None
    assert textnorm.whole_words("jane@example.com") == ["example"]
    assert textnorm.whole_words(" Jane Doe ") == ["jane", "doe"]


async def test_upsert_replaces_and_keyword_ranks_by_bm25(index: EmbeddedIndex) -> None:
    rng = np.random.default_rng(5)
    await index.upsert(
        "docs",
        [
            chunk(0, "compressor stall margin in transonic flow", rng),
            chunk(1, "compressor maintenance schedule", rng),
            chunk(2, "landing gear", rng),
        ],
    )
    hits = await index.keyword_search("docs", "compressor stall", Readers.of("public"), 5)
    assert [h.chunk.chunk_id for h in hits] == ["c0", "c1"]
    await index.upsert("docs", [chunk(0, "rotor icing", rng)])
    assert await index.count("docs") == 3
    hits = await index.keyword_search("docs", "stall", Readers.of("public"), 5)
    assert hits == []
    (hit,) = await index.keyword_search("docs", "icing", Readers.of("public"), 5)
    assert hit.chunk.text == "rotor icing"


async def test_chunks_containing_finds_substrings_case_insensitively(index: EmbeddedIndex) -> None:
    rng = np.random.default_rng(6)
    await index.upsert(
        "docs",
        [
            chunk(0, "Contact Jane.Doe@Example.com for access.", rng),
            chunk(1, "jane doe wrote this", rng),
            chunk(2, "Nothing here about example", rng),
        ],
    )
    await index.create_bank("other", DIMS)
    await index.upsert("other", [chunk(0, "jane.doe@example.com", rng)])

    async def found(text: str) -> list[str]:
        return sorted(c.chunk_id for c in await index.chunks_containing("docs", text))

    assert await found("jane.doe@example.com") == ["c0"]
    assert await found("ane.doe@exam") == ["c0"]  # partial words at both ends
    assert await found("JANE") == ["c0", "c1"]
    assert await found("for access.") == ["c0"]
    assert await found("example") == ["c0", "c2"]
    assert await found("@") == ["c0"]
    assert await found("absent@example.com") == []


async def test_erasure_leaves_no_bytes_on_disk(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    path = tmp_path / "kb" / "index.sqlite"
    index = EmbeddedIndex(path)
    await index.open()
    try:
        await index.create_bank("docs", DIMS)
        marker = "zqxw7731marker"
        filler = [chunk(i, f"ordinary chunk {i} about pumps and valves " * 20, rng) for i in range(2, 200)]
        await index.upsert("docs", filler)
        await index.upsert("docs", [chunk(0, f"secret {marker} salary of jane", rng), chunk(1, "keep me", rng)])
        await index.keyword_search("docs", marker, Readers.of("public"), 5)  # a reader connection
        await index.vector_search("docs", unit(rng), Readers.of("public"), 5)  # a matrix in memory
        assert any(marker.encode() in p.read_bytes() for p in path.parent.iterdir())
        assert await index.delete_documents("docs", ["d0"]) == 2
        assert await index.keyword_search("docs", marker, Readers.everyone(), 5) == []
        assert await index.chunks_containing("docs", marker) == []
        await index.compact()
        for file in path.parent.iterdir():
            data = file.read_bytes()
            assert marker.encode() not in data, file.name
            assert b"salary of jane" not in data, file.name
        assert await index.count("docs") == 198
        assert len(await index.keyword_search("docs", "pumps", Readers.of("public"), 500)) == 198
    finally:
        await index.close()


async def test_another_process_writes_are_seen_within_a_second(index: EmbeddedIndex, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    await index.upsert("docs", [chunk(i, f"existing chunk {i}", rng) for i in range(20)])
    target = np.zeros(DIMS, dtype=np.float32)
    target[0] = 1.0
    reader = Readers.of("public")
    before = await index.vector_search("docs", target, reader, 3)  # the bank's matrix is now in memory
    assert "remote" not in [h.chunk.chunk_id for h in before]
    script = textwrap.dedent(
        f"""
        import asyncio, numpy as np
        from pathlib import Path
        from meshgate.knowledge.index.base import ChunkRef, IndexedChunk
        from meshgate.knowledge.index.embedded import EmbeddedIndex

        async def main():
            index = EmbeddedIndex(Path({str(index.path)!r}))
            await index.open()
            vector = np.zeros({DIMS}, dtype=np.float32); vector[0] = 1.0
            ref = ChunkRef("remote", "dr", "written by the cli process", "cli", "t")
            await index.upsert("docs", [IndexedChunk(ref, vector)])
            await index.delete_documents("docs", ["d0"])
            await index.close()

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env)
    assert await done.wait() == 0
    finished = time.monotonic()
    while True:
        vector = await index.vector_search("docs", target, reader, 3)
        keyword = await index.keyword_search("docs", "cli process", reader, 3)
        if vector and vector[0].chunk.chunk_id == "remote" and keyword:
            break
        assert time.monotonic() - finished < 1.0, "the other process's chunk is not visible after a second"
        await asyncio.sleep(0.05)
    assert keyword[0].chunk.chunk_id == "remote"
    assert vector[0].score == pytest.approx(1.0, abs=1e-5)
    everything = await index.vector_search("docs", target, Readers.everyone(), 100)
    assert {h.chunk.document_id for h in everything}.isdisjoint({"d0"})
    assert len(everything) == 19 == await index.count("docs")


async def test_drop_bank_and_unknown_bank(index: EmbeddedIndex) -> None:
    rng = np.random.default_rng(9)
    await index.upsert("docs", [chunk(0, "to be dropped", rng)])
    await index.vector_search("docs", unit(rng), Readers.everyone(), 1)
    await index.drop_bank("docs")
    with pytest.raises(KeyError):
        await index.count("docs")
    await index.create_bank("docs", DIMS)  # a new bank of the same name starts empty
    assert await index.count("docs") == 0
    assert await index.vector_search("docs", unit(rng), Readers.everyone(), 5) == []
    assert await index.keyword_search("docs", "dropped", Readers.everyone(), 5) == []
