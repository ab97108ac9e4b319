"""The usage step: one priced record per call, handed to the batch writer off the request path."""

from __future__ import annotations

import json

from meshgate.gateway.capabilities import REFUSED
from meshgate.gateway.pipeline import ORDER_RECORD, Call, Step
from meshgate.store import BatchWriter, UsageRecord


class UsageStep(Step):
    name = "usage"
    order = ORDER_RECORD

    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer

    async def after(self, call: Call) -> None:
        principal = call.principal
        refused = REFUSED in call.notes
        self.writer.submit(
            UsageRecord(
                id=call.request_id,
                ts=call.started_wall,
                endpoint=call.endpoint,
                key_id=principal.key_id if principal is not None else None,
                team=principal.team if principal is not None else None,
                user_name=call.request.user,
                model=call.model_name,
                served_model=call.model.name if call.model is not None else call.model_name,
                status=call.status,
                # A refused call never went upstream: it used no tokens and cost nothing.
                prompt_tokens=0 if refused else call.prompt_tokens,
                completion_tokens=0 if refused else call.completion_tokens,
                cost_usd=0.0 if refused else call.cost_usd,
                latency_ms=call.latency_ms,
                ttft_ms=call.ttft_ms,
                stream=call.stream,
                cache_hit=call.cache_hit,
                error_kind=call.error.kind if call.error is not None else None,
                refused=refused,
                deployment=call.ctx.deployment,
                attempts=len(call.ctx.failovers) + (0 if call.ctx.deployment is None else 1),
                failovers=json.dumps([{"deployment": d, "reason": r} for d, r in call.ctx.failovers])
                if call.ctx.failovers
                else None,
                cache=call.cache,
                cost_saved_usd=call.cost_saved_usd,
                guards=json.dumps(summary) if (summary := guards_summary(call.notes.get("guards"))) else None,
            )
        )


def guards_summary(record: object) -> dict[str, object] | None:
    """What the guards step left in `call.notes["guards"]`, as usage and audit record it: guard
    names and finding counts (never values)."""
    if not isinstance(record, dict):
        return None
    return {"guards": list(record.get("guards") or ()), "findings": dict(record.get("findings") or {})}
