"""The usage step: one priced record per call, handed to the batch writer off the request path."""

from __future__ import annotations

from meshgate.gateway.pipeline import ORDER_RECORD, Call, Step
from meshgate.store import BatchWriter, UsageRecord


class UsageStep(Step):
    name = "usage"
    order = ORDER_RECORD

    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer

    async def after(self, call: Call) -> None:
        principal = call.principal
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
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                cost_usd=call.cost_usd,
                latency_ms=call.latency_ms,
                ttft_ms=call.ttft_ms,
                stream=call.stream,
                cache_hit=call.cache_hit,
                error_kind=call.error.kind if call.error is not None else None,
            )
        )
