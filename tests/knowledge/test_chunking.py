"""Chunking by structure within a token budget: pages, sections, headings, overlap, offsets, budget
by a whitespace counter and by the embedding model's own tokenizer, linear work."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator, Callable

import pytest

from meshgate.knowledge.chunking import Chunk, chunk_document
from meshgate.knowledge.parsing import Block, ParsedDocument, parse_document
from tests.knowledge import fixtures

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def count_words(text: str) -> int:
    return len(text.split())


def with_special_tokens(text: str) -> int:
    """Like a model's tokenizer: two tokens ([CLS], [SEP]) on every text, even an empty one."""
    return len(text.split()) + 2


def sentences(rng: random.Random, count: int, words: tuple[int, int] = (5, 15)) -> str:
    return " ".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))).capitalize() + "." for _ in range(count)
    )


def check_invariants(doc: ParsedDocument, chunks: list[Chunk], counter: Callable[[str], int], max_tokens: int) -> None:
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert doc.text[chunk.start : chunk.end] == chunk.text
        assert chunk.text.strip() == chunk.text and chunk.text
        assert counter(chunk.text) <= max_tokens, chunk.text
    # Chunks move forward, and together they cover every body block.
    assert all(a.start < b.start and a.end < b.end for a, b in itertools.pairwise(chunks))
    for block, (start, end) in zip(doc.blocks, doc.block_spans, strict=True):
        if not block.heading:
            covered = [c for c in chunks if c.start < end and c.end > start]
            assert covered and min(c.start for c in covered) <= start and max(c.end for c in covered) >= end


def test_pdf_chunks_never_span_pages() -> None:
    rng = random.Random(1)
    pages = [[sentences(rng, 8), sentences(rng, 5)] for _ in range(4)]
    doc = parse_document(fixtures.make_pdf(pages), "report.pdf")
    chunks = chunk_document(doc, count_words, max_tokens=60, overlap_tokens=12)
    check_invariants(doc, chunks, count_words, 60)
    spans_by_page: dict[int, list[tuple[int, int]]] = {}
    for block, span in zip(doc.blocks, doc.block_spans, strict=True):
        assert block.page is not None
        spans_by_page.setdefault(block.page, []).append(span)
    for chunk in chunks:
        assert chunk.page is not None
        page_spans = spans_by_page[chunk.page]
        assert page_spans[0][0] <= chunk.start and chunk.end <= page_spans[-1][1]
    assert {chunk.page for chunk in chunks} == {1, 2, 3, 4}
    # The first chunk of each page starts at the page's first character: no overlap from the page before.
    for page, page_spans in spans_by_page.items():
        assert min(c.start for c in chunks if c.page == page) == page_spans[0][0]


def test_headings_lead_their_section_and_are_never_alone() -> None:
    doc = parse_document(fixtures.MARKDOWN_PAGE.encode(), "handbook.md")
    chunks = chunk_document(doc, count_words, max_tokens=40, overlap_tokens=5)
    check_invariants(doc, chunks, count_words, 40)
    headings = {block.text for block in doc.blocks if block.heading}
    assert all(chunk.text not in headings for chunk in chunks)
    production = [chunk for chunk in chunks if chunk.section == "Deployment > Production"]
    assert len(production) == 1
    assert production[0].text == "Production\n\nProduction deploys need two approvals."
    # The small sub-sections are not merged across top-level (here: second-level) sections.
    assert not any("Staging" in chunk.text and "Production" in chunk.text for chunk in chunks)


def test_small_subsections_merge_with_their_common_section() -> None:
    blocks = [
        Block("Guide", section="Guide", heading=True),
        Block("Install", section="Guide > Install", heading=True),
        Block("Unpack the archive.", section="Guide > Install"),
        Block("Linux", section="Guide > Install > Linux", heading=True),
        Block("Run the script.", section="Guide > Install > Linux"),
        Block("Usage", section="Guide > Usage", heading=True),
        Block("Call the API.", section="Guide > Usage"),
    ]
    doc = ParsedDocument("Guide", "markdown", tuple(blocks))
    chunks = chunk_document(doc, count_words, max_tokens=50, overlap_tokens=5)
    assert [(chunk.text, chunk.section) for chunk in chunks] == [
        ("Guide\n\nInstall\n\nUnpack the archive.\n\nLinux\n\nRun the script.", "Guide > Install"),
        ("Usage\n\nCall the API.", "Guide > Usage"),
    ]


def test_a_full_chunk_starts_a_new_one_at_a_subsection() -> None:
    rng = random.Random(2)
    long_body = sentences(rng, 4, (6, 6))  # 24 words: over half of 40
    blocks = [
        Block("Install", section="Install", heading=True),
        Block(long_body, section="Install"),
        Block("Linux", section="Install > Linux", heading=True),
        Block("Run the script.", section="Install > Linux"),
    ]
    chunks = chunk_document(ParsedDocument("x", "html", tuple(blocks)), count_words, max_tokens=40, overlap_tokens=5)
    assert [chunk.text for chunk in chunks] == [f"Install\n\n{long_body}", "Linux\n\nRun the script."]
    assert [chunk.section for chunk in chunks] == ["Install", "Install > Linux"]


def test_oversized_block_splits_at_sentences_with_overlap() -> None:
    rng = random.Random(3)
    paragraph = sentences(rng, 40, (3, 8))
    doc = ParsedDocument("t", "text", (Block(paragraph),))
    chunks = chunk_document(doc, count_words, max_tokens=50, overlap_tokens=10)
    check_invariants(doc, chunks, count_words, 50)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text.endswith(".")  # cut at sentence ends
        assert chunk.text[0].isupper()  # and starts at one: sentences fit the overlap here
    for previous, following in itertools.pairwise(chunks):
        shared = doc.text[following.start : previous.end]
        assert previous.end > following.start, "consecutive chunks overlap"
        assert 0 < count_words(shared) <= 10


def test_overlap_zero_and_budget_with_special_tokens() -> None:
    rng = random.Random(4)
    doc = ParsedDocument("t", "text", tuple(Block(sentences(rng, rng.randint(1, 9))) for _ in range(30)))
    plain = chunk_document(doc, with_special_tokens, max_tokens=64, overlap_tokens=0)
    check_invariants(doc, plain, with_special_tokens, 64)
    assert all(a.end < b.start for a, b in itertools.pairwise(plain))
    # Packed: two neighbours never fit in one chunk together (else they would have been merged).
    for a, b in itertools.pairwise(plain):
        assert with_special_tokens(doc.text[a.start : b.end]) > 64


def test_runs_without_spaces_or_sentences_still_fit() -> None:
    doc = ParsedDocument("t", "text", (Block("x" * 5000), Block(" ".join(["word"] * 700))))
    counter = lambda text: (len(text) + 9) // 10  # noqa: E731  (one token per 10 characters)
    chunks = chunk_document(doc, counter, max_tokens=30, overlap_tokens=5)
    check_invariants(doc, chunks, counter, 30)


def test_document_of_only_headings_still_has_a_chunk() -> None:
    doc = ParsedDocument("t", "markdown", (Block("Title", section="Title", heading=True),))
    assert [chunk.text for chunk in chunk_document(doc, count_words)] == ["Title"]


def test_parameters_are_checked() -> None:
    doc = ParsedDocument("t", "text", (Block("text"),))
    with pytest.raises(ValueError, match="overlap_tokens"):
        chunk_document(doc, count_words, max_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError, match="no room"):
        chunk_document(doc, with_special_tokens, max_tokens=2, overlap_tokens=0)


def test_every_fixture_format_chunks_cleanly() -> None:
    rng = random.Random(5)
    files = {
        "a.pdf": fixtures.make_pdf([[sentences(rng, 20)], [sentences(rng, 3)]]),
        "a.docx": fixtures.make_docx(),
        "a.html": fixtures.HTML_PAGE.encode(),
        "a.md": fixtures.MARKDOWN_PAGE.encode(),
        "a.csv": fixtures.CSV_TABLE.encode(),
        "a.txt": "\n\n".join(sentences(rng, rng.randint(1, 30)) for _ in range(20)).encode(),
    }
    for name, data in files.items():
        doc = parse_document(data, name)
        for max_tokens, overlap in ((20, 0), (40, 8), (200, 40)):
            check_invariants(doc, chunk_document(doc, count_words, max_tokens, overlap), count_words, max_tokens)
    # CSV rows stay whole when they fit.
    csv_doc = parse_document(fixtures.CSV_TABLE.encode(), "a.csv")
    rows = {block.text for block in csv_doc.blocks}
    for chunk in chunk_document(csv_doc, count_words, max_tokens=12, overlap_tokens=0):
        assert set(chunk.text.split("\n\n")) <= rows


# -- the embedding model's tokenizer ---------------------------------------------------------------


@pytest.fixture(scope="module")
async def minilm_tokens() -> AsyncIterator[Callable[[str], int]]:
    """all-MiniLM-L6-v2's tokenizer, loaded by the local embedding provider's own code."""
    from meshgate.providers.local.embedding import LocalEmbeddingConfig, LocalEmbeddingModel

    model = LocalEmbeddingModel(LocalEmbeddingConfig(name="chunk-test", provider="local-embedding"))
    await model.start()
    yield model.count_tokens
    await model.close()


def test_chunks_fit_the_embedding_model(minilm_tokens: Callable[[str], int]) -> None:
    rng = random.Random(6)
    prose = "\n\n".join(sentences(rng, rng.randint(1, 25)) for _ in range(40))
    messy = "Prices: €5, ¥300 — see https://example.com/a_b?c=d.\n\nnaïve café; e-mail: jane.doe@example.com!" * 30
    # A word longer than the budget is cut at characters; its halves never share a chunk (whole, a
    # word can count more WordPiece tokens than its halves do).
    unspaced = (
        "--config=mesh.yaml " + "supercalifragilisticexpialidocious" * 40 + " 日本語のテキストです。これは文です。" * 20
    )
    for text in (prose, messy, unspaced, fixtures.MARKDOWN_PAGE * 5):
        doc = parse_document(text.encode(), "doc.md")
        for max_tokens in (12, 64, 256):
            chunks = chunk_document(doc, minilm_tokens, max_tokens=max_tokens, overlap_tokens=max_tokens // 4)
            check_invariants(doc, chunks, minilm_tokens, max_tokens)
    assert minilm_tokens("") == 2


# -- linear work and speed --------------------------------------------------------------------------


def test_tokens_are_counted_about_once_per_character() -> None:
    rng = random.Random(7)
    doc = ParsedDocument("t", "text", tuple(Block(sentences(rng, rng.randint(1, 60))) for _ in range(200)))
    counted = 0

    def counting(text: str) -> int:
        nonlocal counted
        counted += len(text)
        return len(text.split())

    chunk_document(doc, counting, max_tokens=100, overlap_tokens=20)
    # Blocks once, oversized blocks' sentences once more, each chunk's tail once for its overlap.
    assert counted < 3 * len(doc.text)


def test_one_megabyte_of_text_parses_and_chunks_in_well_under_a_second() -> None:
    rng = random.Random(8)
    paragraphs = []
    size = 0
    while size < 2**20:
        paragraph = sentences(rng, rng.randint(1, 12))
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
    data = "\n\n".join(paragraphs).encode()
    started = time.perf_counter()
    doc = parse_document(data, "big.txt")
    chunks = chunk_document(doc, count_words, max_tokens=200, overlap_tokens=40)
    elapsed = time.perf_counter() - started
    assert len(chunks) > 500
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_random_documents_keep_every_invariant() -> None:
    """Random structure (pages, nested headings, long and tiny blocks), counters and budgets."""
    rng = random.Random(9)
    # Counters that add up over pieces cut at whitespace, as WordPiece does (see chunking's docstring).
    counters: list[Callable[[str], int]] = [count_words, with_special_tokens, lambda text: len("".join(text.split()))]
    for _ in range(100):
        blocks: list[Block] = []
        paged = rng.random() < 0.3
        path: list[str] = []
        for _ in range(rng.randint(1, 25)):
            if not paged and rng.random() < 0.3:
                level = rng.randint(1, min(3, len(path) + 1))
                path = [*path[: level - 1], f"H{len(blocks)}"]
                blocks.append(Block(path[-1], section=" > ".join(path), heading=True))
                continue
            text = sentences(rng, rng.randint(1, 30), (1, rng.choice((5, 40))))
            if rng.random() < 0.1:
                text = "z" * rng.randint(1, 400)
            page = len(blocks) // 4 + 1 if paged else None
            blocks.append(Block(text, page=page, section=" > ".join(path) or None))
        doc = ParsedDocument("r", "pdf" if paged else "markdown", tuple(blocks))
        counter = rng.choice(counters)
        max_tokens = rng.randint(8, 120)
        overlap = rng.randint(0, max_tokens // 2)
        chunks = chunk_document(doc, counter, max_tokens=max_tokens, overlap_tokens=overlap)
        check_invariants(doc, chunks, counter, max_tokens)
        for chunk in chunks:
            pages = {
                b.page
                for b, (s, e) in zip(doc.blocks, doc.block_spans, strict=True)
                if s < chunk.end and e > chunk.start
            }
            assert pages == {chunk.page}
