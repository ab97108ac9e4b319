"""Hybrid fusion of keyword and vector hit lists: arithmetic of each method and its score scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meshgate.knowledge.index import fusion
from meshgate.knowledge.index.base import ChunkRef, Hit, IndexedChunk, Readers
from meshgate.knowledge.index.embedded import EmbeddedIndex
from meshgate.providers.base import CallContext
from meshgate.providers.local.embedding import LocalEmbeddingConfig, LocalEmbeddingModel


def hits(*pairs: tuple[str, float]) -> list[Hit]:
    return [Hit(ChunkRef(chunk_id, "d", f"text {chunk_id}", "s", "t"), score) for chunk_id, score in pairs]


def ids(result: list[Hit]) -> list[str]:
    return [hit.chunk.chunk_id for hit in result]


KEYWORD = hits(("a", 12.0), ("b", 9.0), ("c", 3.0))
VECTOR = hits(("b", 0.71), ("d", 0.64), ("a", 0.40))


def test_rrf_sums_reciprocal_ranks() -> None:
    result = fusion.fuse(KEYWORD, VECTOR, 10, "rrf")
    scores = {hit.chunk.chunk_id: hit.score for hit in result}
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert scores["d"] == pytest.approx(1 / 62)
    assert scores["c"] == pytest.approx(1 / 63)
    assert ids(result) == ["b", "a", "d", "c"]
    weighted = fusion.fuse(KEYWORD, VECTOR, 10, "rrf", keyword_weight=0.0)
    assert ids(weighted)[:3] == ["b", "d", "a"]


def test_k_truncates_and_chunks_are_not_repeated() -> None:
    doubled = KEYWORD + hits(("a", 1.0))
    for method in fusion.METHODS:
        result = fusion.fuse(doubled, VECTOR, 2, method)
        assert len(result) == 2
        assert len(set(ids(result))) == 2
        assert [h.score for h in result] == sorted((h.score for h in result), reverse=True)
        assert fusion.fuse([], [], 5, method) == []
        assert ids(fusion.fuse(KEYWORD, [], 5, method)) == ["a", "b", "c"]
        assert ids(fusion.fuse([], VECTOR, 5, method)) == ["b", "d", "a"]


def test_minmax_and_zscore_weigh_the_lists_by_alpha() -> None:
    for method in ("minmax", "zscore"):
        assert ids(fusion.fuse(KEYWORD, VECTOR, 1, method, alpha=0.0)) == ["a"]
        assert ids(fusion.fuse(KEYWORD, VECTOR, 1, method, alpha=1.0)) == ["b"]
    # b: 0.5 * 1 + 0.5 * (9 - 3) / 9;  a: 0.5 * 0 + 0.5 * 1
    scores = {h.chunk.chunk_id: h.score for h in fusion.fuse(KEYWORD, VECTOR, 5, "minmax")}
    assert scores["b"] == pytest.approx(0.5 + 0.5 * 6 / 9)
    assert scores["a"] == pytest.approx(0.5)


def test_anchored_score_stays_on_the_cosine_scale() -> None:
    result = fusion.fuse(KEYWORD, VECTOR, 10, "anchored", alpha=0.5)
    scores = {h.chunk.chunk_id: h.score for h in result}
    top_cosine = 0.71
    assert scores["b"] == pytest.approx(0.5 * 0.71 + 0.5 * 9 / 12 * top_cosine)
    assert scores["a"] == pytest.approx(0.5 * 0.40 + 0.5 * top_cosine)
    assert scores["c"] == pytest.approx(0.5 * 3 / 12 * top_cosine)  # not in the vector list: cosine 0
    floored = fusion.fuse(KEYWORD, VECTOR, 10, "anchored", missing_cosine=1.0)
    assert {h.chunk.chunk_id: h.score for h in floored}["c"] == pytest.approx(0.5 * 0.40 + 0.5 * 3 / 12 * top_cosine)
    assert scores["d"] == pytest.approx(0.5 * 0.64)
    assert max(scores.values()) <= top_cosine
    # A strong keyword match cannot lift a query whose vectors are all weak: the score stays low.
    weak = fusion.fuse(hits(("x", 40.0)), hits(("x", 0.12), ("y", 0.10)), 1, "anchored")
    assert weak[0].chunk.chunk_id == "x" and weak[0].score == pytest.approx(0.12)
    # Ranking-only methods put the same weak query on top of their scale.
    rrf = fusion.fuse(hits(("x", 40.0)), hits(("x", 0.12), ("y", 0.10)), 1, "rrf")
    assert rrf[0].score == pytest.approx(2 / 61)


def test_unknown_method_or_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fusion method"):
        fusion.fuse(KEYWORD, VECTOR, 3, "borda")
    with pytest.raises(ValueError, match="no parameter"):
        fusion.fuse(KEYWORD, VECTOR, 3, "rrf", alpha=0.3)
    assert fusion.DEFAULT_METHOD in fusion.METHODS
    assert fusion.KEYWORD_CANDIDATES >= 10 and fusion.VECTOR_CANDIDATES >= 10


@pytest.mark.slow
async def test_hybrid_with_real_embeddings_finds_a_paraphrase(tmp_path: Path) -> None:
    """The local embedder, the embedded index and fusion together: a paraphrased question finds its
    chunk, and the fused top score of an unrelated question is lower."""
    model = LocalEmbeddingModel(LocalEmbeddingConfig(name="local-embed", provider="local-embedding"))
    await model.start()
    index = EmbeddedIndex(tmp_path / "index.sqlite")
    await index.open()
    try:
        texts = [
            "The cafeteria opens at eight and serves breakfast until ten.",
            "Employees may work from home up to three days a week with their manager's approval.",
            "The VPN must be used on public wireless networks.",
            "Expense reports are due by the fifth day of the following month.",
        ]
        vectors = (await model.embed(texts, CallContext(request_id="t"))).vectors
        await index.create_bank("hr", len(vectors[0]))
        await index.upsert(
            "hr",
            [
                IndexedChunk(ChunkRef(f"c{i}", f"d{i}", text, "handbook.md", "Handbook"), np.array(vector))
                for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
            ],
        )
        readers = Readers.of("public")

        async def search(question: str) -> list[Hit]:
            (vector,) = (await model.embed([question], CallContext(request_id="t"))).vectors
            keyword = await index.keyword_search("hr", question, readers, fusion.KEYWORD_CANDIDATES)
            nearest = await index.vector_search("hr", np.array(vector), readers, fusion.VECTOR_CANDIDATES)
            return fusion.fuse(keyword, nearest, 3)

        remote = await search("Am I allowed to do my job remotely from my house?")
        assert remote[0].chunk.chunk_id == "c1"
        unrelated = await search("Who won the football world cup in 1998?")
        assert unrelated[0].score < remote[0].score
    finally:
        await index.close()
        await model.close()
