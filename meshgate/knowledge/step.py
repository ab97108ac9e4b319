"""The grounded-answer step: `"knowledge": {"banks": [...], "top_k": 5}` on a chat request.

Before the model: retrieve for the last user turn from each named bank (the caller's ACLs inside the
index query), drop retrieved chunks the guards' injection detector flags as instructions hidden in
a document, raise the call's data class to the most sensitive chunk's (so routing by data class
keeps a `restricted` answer on local models), and either abstain (no chunk with enough evidence: the
model is not asked) or hand the model its numbered sources. On the way back: the answer carries a
top-level `citations` list and `abstained`; in streams they come in a last chunk before `[DONE]`.

Runs after the limits and before the guards (which then see the retrieved text like any prompt:
a cloud-egress guard redacts what the documents hold) and before the cache (the cache key covers the
sources the model read, so a changed document is a new key).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from meshgate.cache.key import last_user_text
from meshgate.control.policy import ANONYMOUS, PermissionDenied, Principal
from meshgate.data_classes import stricter
from meshgate.errors import InvalidRequest, ServiceUnavailable
from meshgate.gateway.pipeline import ORDER_INPUT_GUARDS, Call, Step, add_output
from meshgate.guards.engine import run_in_guard_worker
from meshgate.guards.findings import ScanContext
from meshgate.knowledge import access, grounding
from meshgate.knowledge.acl import readers_of
from meshgate.knowledge.errors import BankNotFound
from meshgate.knowledge.grounding import Source
from meshgate.knowledge.service import KnowledgeService
from meshgate.protocol import ChatCompletionRequest, SystemMessage, message_text

#: Notes key: what was retrieved (document ids for erasure of cache entries, counts for usage).
NOTES_KEY = "knowledge"
EVIDENCE_HEADER = "x-meshgate-evidence"
INJECTION_CONTEXT = ScanContext("input", "document")


class KnowledgeStep(Step):
    name = "knowledge"
    order = ORDER_INPUT_GUARDS - 25

    def __init__(
        self, service: Callable[[], KnowledgeService | None], enforce_data_class: Callable[[Call], None]
    ) -> None:
        self.service = service
        self.enforce_data_class = enforce_data_class

    async def before(self, call: Call) -> None:
        request = call.request
        if not isinstance(request, ChatCompletionRequest) or request.knowledge is None:
            return
        options = request.knowledge
        service = self.service()
        if service is None:
            raise ServiceUnavailable("Knowledge banks are not available: the server has not started them.")
        question = last_user_text(request)
        if not question or not question.strip():
            raise InvalidRequest(
                "knowledge: the last message must be the user's question (text), to retrieve for it.",
                param="messages",
                code="invalid_knowledge_request",
            )
        principal: Principal = call.principal if isinstance(call.principal, Principal) else ANONYMOUS
        readers = readers_of(principal)
        top_k = options.top_k or service.config.top_k
        scored: list[tuple[float, str, Any]] = []
        for name in dict.fromkeys(options.banks):
            bank = await service.bank(name)
            try:
                access.require_read(principal, bank)
            except PermissionDenied:
                raise BankNotFound(name) from None
            # With `rerank`, the reranker picks which top_k chunks come back; abstention below still
            # reads each chunk's evidence (its cosine and word coverage), not the reranker's score.
            retrieved = await service.retrieve(
                name, question, readers, top_k, options.filters, call.request_id, options.rerank
            )
            for hit in retrieved.hits:
                similarity = retrieved.similarities.get(hit.chunk.chunk_id)
                scored.append((grounding.evidence(question, hit, similarity), name, hit))
        scored.sort(key=lambda item: -item[0])
        flagged = await _injected([hit.chunk.text for _, _, hit in scored])
        kept = [item for item, bad in zip(scored, flagged, strict=True) if not bad][:top_k]
        sources = [Source(number, hit, score, bank) for number, (score, bank, hit) in enumerate(kept, 1)]
        best = max((s.evidence for s in sources), default=0.0)
        call.notes[NOTES_KEY] = {
            "banks": list(dict.fromkeys(options.banks)),
            "documents": sorted({s.hit.chunk.document_id for s in sources}),
            "retrieved": len(scored),
            "dropped_injection": sum(flagged),
            "evidence": best,
        }
        # The best chunk's evidence, so clients (and bench/knowledge_answers.py) can see why it abstained.
        call.response_headers[EVIDENCE_HEADER] = f"{best:.4f}"
        minimum = options.min_evidence
        if minimum is None:
            minimum = service.config.min_evidence
        if minimum is None:
            minimum = grounding.DEFAULT_MIN_EVIDENCE
        if options.abstain and (not sources or best < minimum):
            call.request = msgspec.structs.replace(request, knowledge=None)
            call.replay = _abstention(call, request)
            add_output(call, GroundedOutput([], question, abstained=True))
            return
        # Only now does chunk text go to a model: the call takes the most sensitive source's class.
        raised = stricter(call.ctx.data_class, *(s.hit.chunk.data_class for s in sources))
        if raised and raised != call.ctx.data_class:
            call.ctx.data_class = raised
            self.enforce_data_class(call)
        system = "\n\n".join(message_text(m.content) for m in request.messages if isinstance(m, SystemMessage))
        prompt = grounding.sources_prompt(sources) + (f"\n\n{system}" if system else "")
        messages = [SystemMessage(content=prompt), *(m for m in request.messages if not isinstance(m, SystemMessage))]
        call.request = msgspec.structs.replace(request, messages=messages, knowledge=None)
        add_output(call, GroundedOutput(sources, question))


async def _injected(texts: list[str]) -> list[bool]:
    if not texts:
        return []
    from meshgate.guards.registry import builtin

    detector = builtin("injection")
    return await run_in_guard_worker(lambda: [bool(detector.detect(t, INJECTION_CONTEXT)) for t in texts])


def _abstention(call: Call, request: ChatCompletionRequest) -> Any:
    """The answer served instead of the model's (a completion, or a stream's chunks)."""
    base = {"id": f"chatcmpl-{call.request_id}", "created": int(time.time()), "model": request.model}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not call.stream:
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": grounding.ABSTENTION},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    chunk = {**base, "object": "chat.completion.chunk"}
    chunks = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": grounding.ABSTENTION}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if request.wants_usage_chunk:
        chunks.append({**chunk, "choices": [], "usage": usage})
    return chunks


class GroundedOutput:
    """Adds `citations` and `abstained` to the answer; adds a marker when the model cited nothing."""

    def __init__(self, sources: list[Source], question: str, abstained: bool = False) -> None:
        self.sources = sources
        self.question = question
        self.abstained = abstained
        self._final: dict[str, Any] | None = None

    def _finish(self, answer: str) -> tuple[str, list[dict[str, Any]], bool]:
        """(text to append, citations, abstained) for the whole answer text."""
        if self.abstained or grounding.says_it_cannot_answer(answer):
            return "", [], True
        numbers = grounding.cited_numbers(answer, len(self.sources))
        suffix = ""
        if not numbers:
            best = grounding.best_source(answer, self.sources)
            if best is not None:
                numbers = [best]
                suffix = f" [{best}]"
        return suffix, grounding.citations(answer, self.sources, numbers), False

    async def complete(self, result: dict[str, Any]) -> dict[str, Any]:
        result = dict(result)
        choices = [dict(choice) for choice in result.get("choices") or ()]
        text = ""
        if choices:
            message = dict(choices[0].get("message") or {})
            text = str(message.get("content") or "")
            suffix, cited, abstained = self._finish(text)
            if suffix and message.get("content") is not None:
                message["content"] = text + suffix
            choices[0]["message"] = message
        else:
            cited, abstained = [], True
        result["choices"] = choices
        result["citations"] = cited
        result["abstained"] = abstained
        return result

    async def stream(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        parts: list[str] = []
        template: dict[str, Any] = {}
        held_usage: dict[str, Any] | None = None
        async for chunk in chunks:
            if not template:
                template = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
            choices = chunk.get("choices") or ()
            for choice in choices:
                if int(choice.get("index") or 0) == 0:
                    parts.append(str((choice.get("delta") or {}).get("content") or ""))
            finishing = any(choice.get("finish_reason") for choice in choices)
            if finishing:
                # The marker (when the model cited nothing) goes out before the finish reason.
                suffix, cited, abstained = self._finish("".join(parts))
                if suffix:
                    yield {**template, "choices": [{"index": 0, "delta": {"content": suffix}}]}
                self._final = {**template, "choices": [], "citations": cited, "abstained": abstained}
            if not choices and chunk.get("usage") is not None:
                held_usage = chunk
                continue
            yield chunk
        final = self._final
        if final is None:
            suffix, cited, abstained = self._finish("".join(parts))
            final = {**template, "choices": [], "citations": cited, "abstained": abstained}
        if held_usage is not None:
            yield held_usage
        yield final
