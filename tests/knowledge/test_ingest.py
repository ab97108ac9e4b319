"""Ingest through the service on real parts (SQLite, the embedded index, the local embedder):
incremental runs, --sync, exact and near duplicates, all-or-nothing files, classification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.knowledge.config import KnowledgeConfig
from meshgate.knowledge.index.base import Readers
from meshgate.knowledge.ingest import IngestItem
from meshgate.knowledge.service import KnowledgeService
from meshgate.providers.base import CallContext, EmbeddingModel, Embeddings, Model
from meshgate.providers.local.embedding import LocalEmbeddingConfig, LocalEmbeddingModel
from meshgate.store import connect, migrate
from tests.knowledge.fixtures import make_pdf, truncate

LONG = " ".join(
    f"Section {n} of the maintenance manual explains how the pump number {n} is inspected, cleaned and "
    f"restarted after a pressure alarm, and who signs the log afterwards."
    for n in range(30)
)


class CountingEmbedder:
    """The real local embedder, counting the texts it embeds (and failing on demand)."""

    def __init__(self, inner: LocalEmbeddingModel) -> None:
        self.inner = inner
        self.texts = 0
        self.fail = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def embed(self, texts: Any, call: CallContext, dimensions: int | None = None) -> Embeddings:
        if self.fail:
            raise RuntimeError("embedder down")
        self.texts += len(texts)
        return await self.inner.embed(texts, call, dimensions)


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[LocalEmbeddingModel]:
    model = LocalEmbeddingModel(LocalEmbeddingConfig(name="local-embed", provider="local-embedding"))
    await model.start()
    yield model
    await model.close()


@pytest.fixture
async def setup(tmp_path: Path, embedder: LocalEmbeddingModel) -> AsyncIterator[tuple[KnowledgeService, Any]]:
    db = await connect(f"sqlite:///{tmp_path / 'meshgate.db'}")
    await migrate(db)
    counting = CountingEmbedder(embedder)
    EmbeddingModel.register(CountingEmbedder)

    def lookup(name: str) -> Model | None:
        return counting if name == "local-embed" else None  # type: ignore[return-value]

    service = KnowledgeService(db, KnowledgeConfig(), tmp_path, lookup)
    await service.start()
    await service.create_bank("docs")
    yield service, counting
    await service.close()
    await db.close()


def item(source: str, data: bytes | str, filename: str | None = None) -> IngestItem:
    raw = data.encode() if isinstance(data, str) else data
    return IngestItem(source=source, filename=filename or Path(source).name, read=lambda: raw)


async def chunk_count(service: KnowledgeService) -> int:
    return await (await service.index("embedded")).count("docs")


async def test_incremental_runs_and_sync(setup: tuple[KnowledgeService, Any]) -> None:
    service, counting = setup
    first = await service.ingest("docs", [item("a.md", "# A\n\nAlpha text about pumps."), item("b.txt", LONG)])
    assert first.summary()["added"] == 2
    embedded = counting.texts
    again = await service.ingest("docs", [item("a.md", "# A\n\nAlpha text about pumps."), item("b.txt", LONG)])
    assert again.summary()["unchanged"] == 2 and counting.texts == embedded  # nothing embedded again
    old = await service.records.by_source("docs", "a.md")
    changed = await service.ingest("docs", [item("a.md", "# A\n\nAlpha text about valves now.")])
    assert changed.summary()["updated"] == 1
    new = await service.records.by_source("docs", "a.md")
    assert old is not None and new is not None and new.id != old.id
    hits = await service.search("docs", "valves", Readers.everyone())
    assert hits and all(hit.chunk.document_id != old.id for hit in hits)
    synced = await service.ingest("docs", [item("a.md", "# A\n\nAlpha text about valves now.")], sync=True)
    assert synced.summary()["removed"] == 1 and synced.summary()["unchanged"] == 1
    assert await service.records.by_source("docs", "b.txt") is None
    assert not [
        h
        for h in await service.search("docs", "pump inspected pressure alarm", Readers.everyone())
        if h.chunk.source == "b.txt"
    ]


async def test_duplicates_are_stored_once_and_counted(setup: tuple[KnowledgeService, Any]) -> None:
    service, _ = setup
    await service.ingest("docs", [item("manual.txt", LONG)])
    chunks = await chunk_count(service)
    exact = await service.ingest("docs", [item("copy/manual.txt", LONG)])
    near = await service.ingest("docs", [item("manual-v2.txt", LONG.replace("signs the log", "signs the book", 1))])
    other_acl = await service.ingest("docs", [item("hr/manual.txt", LONG)], acl=("team:hr",))
    assert exact.outcomes[0].status == "duplicate" and exact.outcomes[0].similarity == 1.0
    assert near.outcomes[0].status == "duplicate" and 0.9 <= (near.outcomes[0].similarity or 0) < 1.0
    # A copy under another ACL is indexed on its own: no one reads through it what its ACL would not grant.
    assert other_acl.outcomes[0].status == "added"
    original = await service.records.by_source("docs", "manual.txt")
    assert original is not None
    assert await chunk_count(service) == 2 * chunks
    # Removing the original removes the copies stored under it.
    removed = await service.delete_document("docs", original.id)
    assert len(removed) == 3
    assert await service.records.by_source("docs", "copy/manual.txt") is None


async def test_a_failing_file_leaves_nothing_behind(setup: tuple[KnowledgeService, Any]) -> None:
    service, counting = setup
    broken = truncate(make_pdf([["A page that will not arrive whole."]]), 0.5)
    report = await service.ingest(
        "docs", [item("broken.pdf", broken), item("fine.md", "# Fine\n\nThis one is fine."), item("x.bin", b"\x00\x01")]
    )
    summary = report.summary()
    assert summary["added"] == 1 and summary["failed"] == 2
    reasons = {f["source"]: f["reason"] for f in summary["failures"]}
    assert "PDF" in reasons["broken.pdf"]
    before = await chunk_count(service)
    counting.fail = True
    failed = await service.ingest("docs", [item("later.md", "# Later\n\nEmbedding this fails.")])
    counting.fail = False
    assert failed.summary()["failed"] == 1 and "embedder down" in failed.summary()["failures"][0]["reason"]
    assert await chunk_count(service) == before
    assert await service.records.by_source("docs", "later.md") is None


async def test_documents_are_classified_by_the_guards_detectors(setup: tuple[KnowledgeService, Any]) -> None:
    service, _ = setup
    await service.ingest(
        "docs",
        [
            item("plain.md", "# Plain\n\nThe canteen opens at noon."),
            item("contact.md", "# Contact\n\nWrite to ann.lee@example.com for access."),
            item("keys.md", "# Keys\n\nThe deploy key is AKIAIOSFODNN7EXAMPL3 until March."),
        ],
    )
    classes = {d.source: d.data_class for d in await service.records.documents("docs")}
    assert classes == {"plain.md": "internal", "contact.md": "confidential", "keys.md": "restricted"}
    hits = await service.search("docs", "deploy key", Readers.everyone())
    assert hits[0].chunk.data_class == "restricted"
