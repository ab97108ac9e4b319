"""The guards' pipeline step (ORDER_INPUT_GUARDS: after authorization, data-class routing and limits,
before the cache, so the cache keys and stores what the model really saw).

before: find the guards that apply to the call (by the model's hosting, model, team, key, app);
scan every text of the request; block (400 guard_blocked), hold for review (202), raise the call's
data class (`classify:`), redact (the model gets placeholders) or flag. Then hand the pipeline an
output transform (`call.output`) that checks the answer, masks what the model wrote, and gives the
client its own values back.
after: count findings (kinds, actions; never values) in metrics; usage and audit read them from
`call.notes[NOTES]`.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from meshgate.data_classes import stricter
from meshgate.gateway.capabilities import refused
from meshgate.gateway.pipeline import ORDER_INPUT_GUARDS, Call, Step, add_output
from meshgate.guards.engine import Guards, Hit, Outcome, Plan
from meshgate.guards.errors import GuardBlocked, GuardFailed, ReviewHeld
from meshgate.guards.findings import Direction, ScanContext
from meshgate.guards.messages import Text, rewrite, texts_of
from meshgate.guards.output import OutputGuard
from meshgate.guards.reviews import Review, ReviewStore
from meshgate.guards.vault import Vault
from meshgate.protocol import ChatCompletionRequest, EmbeddingRequest, to_wire
from meshgate.routing.router import RouteBase

log = logging.getLogger("meshgate.guards")

#: Where the step leaves its record for usage and audit: {"guards": [...], "findings": {"input.pii.email.redact": 2}}.
NOTES = "guards"
#: Set on a call that runs a request a reviewer approved: its review rules do not hold it again.
RELEASED = "guards.released"


def _findings_text(outcome: Outcome, hit: Hit) -> str:
    kinds = sorted({h.finding.kind for h in outcome.hits if h.rule.detector == hit.rule.detector})
    return ", ".join(kinds)


class GuardStep(Step):
    name = "guards"
    order = ORDER_INPUT_GUARDS

    def __init__(
        self,
        guards: Callable[[], Guards],
        reviews: Callable[[], ReviewStore | None],
        enforce_data_class: Callable[[Call], None],
        count: Callable[[str, str, str, str, str, int], None] | None = None,
    ) -> None:
        """`guards` and `reviews` are read per call (a reload swaps them); `count(guard, direction,
        detector, kind, action, n)` feeds the metrics."""
        self.guards = guards
        self.reviews = reviews
        self.enforce_data_class = enforce_data_class
        self.count = count

    async def before(self, call: Call) -> None:
        request = call.request
        guards = self.guards()
        if not guards.policies:
            return
        model = call.model
        hostings = [d.hosting for d in model.deployments] if isinstance(model, RouteBase) else [model.hosting]  # type: ignore[union-attr]
        principal = call.principal
        plan = guards.plan_for(
            call.model_name,
            hostings,
            str(getattr(principal, "team", "") or ""),
            str(getattr(principal, "key_id", "") or ""),
            str(getattr(principal, "key_name", "") or ""),
            str(getattr(principal, "role", "") or ""),
        )
        if plan is None:
            return
        record: dict[str, Any] = {"guards": list(plan.guards), "findings": Counter()}
        call.notes[NOTES] = record
        if isinstance(request, EmbeddingRequest):
            await self._embedding(call, guards, plan, request, record)
            return
        assert isinstance(request, ChatCompletionRequest)
        texts = texts_of(request)
        prompt = "\n".join(t.text for t in texts if t.source == "system")
        released = bool(call.notes.get(RELEASED))
        context = ScanContext("input", "user", prompt)
        outcome = await guards.scan(texts, plan.input, context, review_as="flag" if released else "review")
        self._record(record, outcome, "input")
        await self._decide(call, plan, outcome, "input", request, None)
        raised = [plan.classify[h.rule.detector] for h in outcome.hits if h.rule.detector in plan.classify]
        if raised:
            data_class = stricter(call.ctx.data_class, *raised) or call.ctx.data_class
            if data_class != call.ctx.data_class:
                call.ctx.data_class = data_class
                self.enforce_data_class(call)
        vault = Vault()
        spans = outcome.redactions()
        if spans:
            replacements = {index: vault.redact(texts[index].text, found) for index, found in spans.items()}
            call.request = rewrite(request, replacements)
        if plan.output or vault or "sample" in record:

            async def decide(result: Outcome, answer: dict[str, Any] | None) -> None:
                self._record(record, result, "output")
                await self._decide(call, plan, result, "output", request, answer)

            add_output(
                call,
                OutputGuard(guards, plan.output, vault, prompt, decide, plan.holds_output and not released, released),
            )

    async def _embedding(
        self, call: Call, guards: Guards, plan: Plan, request: EmbeddingRequest, record: dict[str, Any]
    ) -> None:
        """Texts to embed are input like any prompt: checked, blocked or redacted (the vectors are of
        the redacted texts; there is no answer to restore values in). Nothing to hold for review:
        `review` blocks."""
        if request.is_token_input:
            return  # token ids: no text to check
        texts = [Text(text, "user") for text in request.inputs() if isinstance(text, str)]
        outcome = await guards.scan(texts, plan.input, ScanContext("input", "user", ""), review_as="block")
        self._record(record, outcome, "input")
        await self._decide(call, plan, outcome, "input", None, None)
        spans = outcome.redactions()
        if spans:
            vault = Vault()
            call.embed_inputs = [
                vault.redact(text.text, spans[index]) if index in spans else text.text
                for index, text in enumerate(texts)
            ]

    async def _decide(
        self,
        call: Call,
        plan: Plan,
        outcome: Outcome,
        direction: Direction,
        request: ChatCompletionRequest | None,
        answer: dict[str, Any] | None,
    ) -> None:
        failed = outcome.failed_closed()
        if failed is not None:
            rule, why = failed
            raise _refused(
                call,
                direction,
                GuardFailed(
                    f"The guard `{rule.guard}` could not check the {direction} ({rule.detector} failed: {why}) "
                    "and fails closed.",
                    guard=rule.guard,
                    detector=rule.detector,
                ),
            )
        block = outcome.severest("block")
        if block is not None:
            what = "request" if direction == "input" else "answer"
            indirect = direction == "input" and block.action != block.rule.rule.action
            where = " in a tool result or document" if indirect else ""
            raise _refused(
                call,
                direction,
                GuardBlocked(
                    f"The guard `{block.rule.guard}` blocked this {what}: {block.rule.detector} found "
                    f"{_findings_text(outcome, block)}{where}.",
                    guard=block.rule.guard,
                    detector=block.rule.detector,
                ),
            )
        review = outcome.severest("review")
        flagged = outcome.severest("flag")
        queue = self.reviews()
        if review is not None:
            if queue is None or request is None:
                raise _refused(
                    call,
                    direction,
                    GuardFailed(
                        f"The guard `{review.rule.guard}` holds this call for review, and this server has "
                        "no review queue; it fails closed.",
                        guard=review.rule.guard,
                        detector=review.rule.detector,
                    ),
                )
            item = await _submit(queue, call, direction, review.rule.guard, _summary(outcome), request, answer)
            raise ReviewHeld(item.id, review.rule.guard, direction)
        # Flagged calls may be sampled into the queue for after-the-fact review, answer included:
        # input flags wait for the answer (whole answers and held streams; not flowing streams).
        record = call.notes.get(NOTES) or {}
        rates = [hit.rule.rule.sample for hit in outcome.hits if hit.action == "flag" and hit.rule.rule.sample > 0]
        if direction == "input" and rates:
            record["sample"] = (max(rates), flagged.rule.guard if flagged is not None else "", _summary(outcome))
        if direction == "output" and answer is not None and queue is not None and request is not None:
            rate, guard, found = record.pop("sample", (0.0, "", []))
            if rates and max(rates) > rate:
                rate, guard = max(rates), flagged.rule.guard if flagged is not None else guard
            if rate > 0 and random.random() < rate:
                try:
                    found += _summary(outcome)
                    await _submit(queue, call, direction, guard, found, request, answer, "sampled")
                except Exception as exc:  # a sample is never worth failing a call for
                    log.warning("guards: could not sample a flagged call (%s)", type(exc).__name__)

    def _record(self, record: dict[str, Any], outcome: Outcome, direction: str) -> None:
        counts: Counter[str] = record["findings"]
        for hit in outcome.hits:
            counts[f"{direction}.{hit.rule.detector}.{hit.finding.kind}.{hit.action}"] += 1
            if self.count is not None:
                self.count(hit.rule.guard, direction, hit.rule.detector, hit.finding.kind, hit.action, 1)
        for rule, _why in outcome.failures:
            counts[f"{direction}.{rule.detector}.error.{rule.on_error}"] += 1
            if self.count is not None:
                self.count(rule.guard, direction, rule.detector, "error", rule.on_error, 1)


async def _submit(
    queue: ReviewStore,
    call: Call,
    direction: Direction,
    guard: str,
    findings: list[dict[str, Any]],
    request: ChatCompletionRequest,
    answer: dict[str, Any] | None,
    status: str = "pending",
) -> Review:
    """Queue the call: held for a decision (`pending`) or sampled for a label (`sampled`)."""
    return await queue.submit(
        request_id=call.request_id,
        key_id=str(getattr(call.principal, "key_id", "") or ""),
        team=str(getattr(call.principal, "team", "") or ""),
        model=call.model_name,
        direction=direction,
        guard=guard,
        findings=findings,
        request=to_wire(request),
        response=answer,
        stream=call.stream,
        status=status,
    )


def _refused(call: Call, direction: str, error: GuardBlocked) -> GuardBlocked:
    """An input refusal never went upstream (no tokens, no cost); an answer blocked on its way back
    was paid for and is recorded as such."""
    if direction == "input":
        refused(call, error)
    return error


def _summary(outcome: Outcome) -> list[dict[str, Any]]:
    counts = Counter((hit.rule.detector, hit.finding.kind) for hit in outcome.hits)
    return [{"detector": d, "kind": k, "count": n} for (d, k), n in sorted(counts.items())]
