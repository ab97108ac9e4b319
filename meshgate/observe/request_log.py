"""The request-log step: one record per call, handed to the batch writer off the request path."""

from __future__ import annotations

from meshgate.gateway.pipeline import ORDER_RECORD, Call, Step
from meshgate.store import RequestLogWriter, RequestRecord


class RequestLogStep(Step):
    name = "request-log"
    order = ORDER_RECORD

    def __init__(self, writer: RequestLogWriter) -> None:
        self.writer = writer

    async def after(self, call: Call) -> None:
        self.writer.submit(
            RequestRecord(
                id=call.request_id,
                ts=call.started_wall,
                endpoint=call.endpoint,
                model=call.model_name,
                status=call.status,
                latency_ms=call.latency_ms,
                ttft_ms=call.ttft_ms,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                stream=call.stream,
                error_kind=call.error.kind if call.error is not None else None,
            )
        )
