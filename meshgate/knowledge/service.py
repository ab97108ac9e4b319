"""Knowledge banks as a service: the operations the CLI and the HTTP routes share.

Access rules are checked by the callers through `knowledge/access.py` before they call in here
(the CLI acts as admin); this module does the work: banks, ingest, documents, search.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meshgate.data_classes import DEFAULT_DATA_CLASS, data_class_problem
from meshgate.errors import ModelNotFound
from meshgate.knowledge.acl import PUBLIC
from meshgate.knowledge.catalog import BankCatalog
from meshgate.knowledge.classify import Classifier
from meshgate.knowledge.config import KnowledgeConfig
from meshgate.knowledge.errors import BankExists, BankNotFound, DocumentNotFound, InvalidKnowledgeRequest
from meshgate.knowledge.index.base import ChunkIndex, Filters, Hit, Readers
from meshgate.knowledge.ingest import IngestItem, Ingestor, IngestReport, Progress, remove_document
from meshgate.knowledge.records import DEFAULT_EMBEDDER, DEFAULT_INDEX, BankRecord, BankRecords, DocumentRecord
from meshgate.names import name_problem
from meshgate.observe.audit import AuditEvent
from meshgate.providers.base import CallContext, EmbeddingModel, Model
from meshgate.store.database import Database

log = logging.getLogger("meshgate.knowledge")

MAX_TOP_K = 50


@dataclass(frozen=True)
class Retrieved:
    hits: list[Hit]
    #: Cosine similarity to the query by chunk id (chunks the vector search found).
    similarities: dict[str, float]
    #: The reranker's score by chunk id when the hits were reranked (orders one query's hits only).
    rerank_scores: dict[str, float] = field(default_factory=dict)


class KnowledgeService:
    def __init__(
        self,
        db: Database,
        config: KnowledgeConfig,
        data_dir: Path,
        lookup_model: Callable[[str], Model | None],
        audit: Callable[[AuditEvent], Awaitable[None] | None] | None = None,
    ) -> None:
        self.records = BankRecords(db)
        self.catalog = BankCatalog(self.records)
        self.config = config
        self.data_dir = data_dir
        self._lookup_model = lookup_model
        self._audit = audit
        self._indexes: dict[str, ChunkIndex] = {}
        self._index_lock = asyncio.Lock()
        self._classifier: Classifier | None = None

    # -- parts -------------------------------------------------------------------------------

    async def index(self, kind: str) -> ChunkIndex:
        found = self._indexes.get(kind)
        if found is not None:
            return found
        async with self._index_lock:
            found = self._indexes.get(kind)
            if found is None:
                from meshgate.knowledge.index.registry import build_index

                found = build_index(kind, self.config.indexes.get(kind, {}), self.data_dir)
                await found.open()
                self._indexes[kind] = found
        return found

    def embedder(self, name: str) -> EmbeddingModel:
        model = self._lookup_model(name)
        if not isinstance(model, EmbeddingModel):
            if model is None:
                raise ModelNotFound(name)
            raise InvalidKnowledgeRequest(f"The model `{name}` is not an embedding model.", param="embedder")
        return model

    def classifier(self) -> Classifier:
        if self._classifier is None:
            self._classifier = Classifier()
        return self._classifier

    async def record_event(self, event: AuditEvent) -> None:
        if self._audit is not None:
            result = self._audit(event)
            if result is not None:
                await result

    async def start(self) -> None:
        await self.catalog.start()

    async def close(self) -> None:
        await self.catalog.stop()
        for index in self._indexes.values():
            try:
                await index.close()
            except Exception:
                log.exception("knowledge: closing the %s index failed", index.kind)
        self._indexes.clear()

    # -- banks -------------------------------------------------------------------------------

    async def create_bank(
        self,
        name: str,
        *,
        team: str | None = None,
        embedder: str = DEFAULT_EMBEDDER,
        index_kind: str = DEFAULT_INDEX,
        data_class: str = DEFAULT_DATA_CLASS,
        acl: tuple[str, ...] = (PUBLIC,),
        description: str = "",
        actor: str = "cli",
    ) -> BankRecord:
        from meshgate.knowledge.index.registry import INDEX_KINDS

        if problem := name_problem("bank name", name):
            raise InvalidKnowledgeRequest(problem, param="name")
        if problem := data_class_problem(data_class):
            raise InvalidKnowledgeRequest(f"data_class: {problem}", param="data_class")
        if index_kind not in INDEX_KINDS:
            raise InvalidKnowledgeRequest(f"index {index_kind!r} is not one of {', '.join(INDEX_KINDS)}", param="index")
        model = self.embedder(embedder)
        dimensions = model.profile.embedding_dimensions or 0
        if dimensions <= 0:
            raise InvalidKnowledgeRequest(f"The model `{embedder}` does not say its dimensions.", param="embedder")
        if await self.records.bank(name) is not None:
            raise BankExists(name)
        index = await self.index(index_kind)
        await index.create_bank(name, dimensions)
        bank = await self.records.create_bank(
            BankRecord(name, team, embedder, index_kind, dimensions, data_class, acl, description)
        )
        self.catalog.remember(bank)
        await self.record_event(
            AuditEvent("bank.created", actor, name, {"team": team, "index": index_kind, "embedder": embedder})
        )
        return bank

    async def bank(self, name: str) -> BankRecord:
        found = await self.catalog.get(name)
        if found is None:
            raise BankNotFound(name)
        return found

    async def banks(self) -> list[BankRecord]:
        await self.catalog.reload()
        return self.catalog.known()

    async def delete_bank(self, name: str, actor: str = "cli") -> dict[str, int]:
        bank = await self.bank(name)
        index = await self.index(bank.index_kind)
        documents = await self.records.documents(name)
        chunks = await index.count(name)
        await index.drop_bank(name)
        await self.records.delete_bank(name)
        await index.compact()
        self.catalog.forget(name)
        await self.record_event(
            AuditEvent("bank.deleted", actor, name, {"documents": len(documents), "chunks": chunks})
        )
        return {"documents": len(documents), "chunks": chunks}

    # -- documents ---------------------------------------------------------------------------

    async def ingest(
        self,
        bank_name: str,
        items: Sequence[IngestItem],
        acl: tuple[str, ...] | None = None,
        sync: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        actor: str = "cli",
    ) -> IngestReport:
        bank = await self.bank(bank_name)
        ingestor = Ingestor(
            bank,
            self.records,
            await self.index(bank.index_kind),
            self.embedder(bank.embedder),
            await asyncio.to_thread(self.classifier),
            on_progress,
        )
        report = await ingestor.run(items, acl or bank.acl, {item.source for item in items} if sync else None)
        summary = report.summary()
        await self.record_event(
            AuditEvent("bank.ingested", actor, bank_name, {k: v for k, v in summary.items() if k != "failures"})
        )
        return report

    async def documents(self, bank_name: str, limit: int | None = None, after: str = "") -> list[DocumentRecord]:
        await self.bank(bank_name)
        return await self.records.documents(bank_name, limit, after)

    async def document(self, bank_name: str, document_id: str) -> DocumentRecord:
        found = await self.records.document(bank_name, document_id)
        if found is None:
            raise DocumentNotFound(bank_name, document_id)
        return found

    async def delete_document(self, bank_name: str, document_id: str, actor: str = "cli") -> list[str]:
        bank = await self.bank(bank_name)
        doc = await self.document(bank_name, document_id)
        index = await self.index(bank.index_kind)
        removed = await remove_document(self.records, index, doc)
        await index.compact()
        await self.record_event(AuditEvent("document.deleted", actor, bank_name, {"documents": removed}))
        return removed

    # -- search ------------------------------------------------------------------------------

    async def embed_query(self, bank: BankRecord, query: str, request_id: str = "search") -> np.ndarray[Any, Any]:
        result = await self.embedder(bank.embedder).embed([query], CallContext(request_id=request_id))
        vector = np.asarray(result.vectors[0], dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def rerank_top_n(self, option: Any) -> int | None:
        """Candidates to rerank for a request's `rerank` value (None: mesh.yaml's knowledge.rerank)."""
        from meshgate.knowledge.rerank import MAX_TOP_N, top_n_of

        top_n = top_n_of(option, self.config.rerank)
        if top_n is not None and not 1 <= top_n <= MAX_TOP_N:
            raise InvalidKnowledgeRequest(f"rerank.top_n: must be between 1 and {MAX_TOP_N}", param="rerank")
        return top_n

    async def search(
        self,
        bank_name: str,
        query: str,
        readers: Readers,
        top_k: int = 5,
        filters: Filters | None = None,
        request_id: str = "search",
        rerank: Any = None,
    ) -> list[Hit]:
        """Hybrid retrieval: BM25 and vectors, both with the readers' ACL inside the query, fused."""
        return (await self.retrieve(bank_name, query, readers, top_k, filters, request_id, rerank)).hits

    async def retrieve(
        self,
        bank_name: str,
        query: str,
        readers: Readers,
        top_k: int = 5,
        filters: Filters | None = None,
        request_id: str = "search",
        rerank: Any = None,
    ) -> Retrieved:
        """`search`, with the cosine similarity of each hit that the vector search found.

        `rerank` (True, an object with `top_n`, False, or None for the server's default): the top
        `top_n` fused chunks (at least `top_k`) are reordered by the reranker (knowledge/rerank.py)
        and the first `top_k` returned; each keeps its fused score as `score`."""
        from meshgate.knowledge.index.fusion import KEYWORD_CANDIDATES, VECTOR_CANDIDATES, fuse

        if not query.strip():
            raise InvalidKnowledgeRequest("query: must not be empty", param="query")
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidKnowledgeRequest(f"top_k: must be between 1 and {MAX_TOP_K}", param="top_k")
        top_n = self.rerank_top_n(rerank)
        bank = await self.bank(bank_name)
        index = await self.index(bank.index_kind)
        vector = await self.embed_query(bank, query, request_id)
        try:
            keyword, similar = await asyncio.gather(
                index.keyword_search(bank_name, query, readers, max(KEYWORD_CANDIDATES, top_k), filters),
                index.vector_search(bank_name, vector, readers, max(VECTOR_CANDIDATES, top_k), filters),
            )
        except ValueError as exc:  # an unknown filter field
            raise InvalidKnowledgeRequest(f"filters: {exc}", param="filters") from None
        similarities = {hit.chunk.chunk_id: hit.score for hit in similar}
        if top_n is None:
            return Retrieved(fuse(keyword, similar, top_k), similarities)
        from meshgate.knowledge import rerank as reranking

        # Only chunks the index queries returned (the readers' ACL applied inside them) are reordered.
        candidates = reranking.candidates_of(fuse(keyword, similar, max(top_n, top_k)), keyword, similar)
        # Text features grow with the chunks' length: off the event loop, like the model's first load.
        reranked = await asyncio.to_thread(lambda: reranking.default_reranker().rerank(query, candidates))
        best = reranked[:top_k]
        return Retrieved([r.hit for r in best], similarities, {r.hit.chunk.chunk_id: r.score for r in best})

    async def audit_read_all(self, bank_name: str, actor: str, query_chars: int) -> None:
        await self.record_event(AuditEvent("bank.read_all", actor, bank_name, {"query_chars": query_chars}))
