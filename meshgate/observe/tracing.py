"""OpenTelemetry spans for model calls, exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

One span per call, named `<endpoint> <model>`, child of the caller's W3C `traceparent` when it sends
one, with the GenAI semantic-convention attributes (model, tokens), the status and the team. No
prompt or response content ever goes into a span. Spans are exported in batches by a background
thread, off the request path.
"""

from __future__ import annotations

import os
from typing import Any

from meshgate import __version__
from meshgate.gateway.pipeline import Call, Step

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


class Tracing:
    def __init__(self, endpoint: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "meshgate"), "service.version": __version__}
        )
        # A provider of our own rather than the global one: several runtimes (tests) stay apart.
        self.provider = TracerProvider(resource=resource)
        traces = endpoint.rstrip("/") + "/v1/traces"
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces)))
        self.tracer = self.provider.get_tracer("meshgate", __version__)

    @classmethod
    def from_env(cls) -> Tracing | None:
        endpoint = os.environ.get(ENDPOINT_ENV)
        return cls(endpoint) if endpoint else None

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what is pending


class TracingStep(Step):
    name = "tracing"
    order = 3

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def after(self, call: Call) -> None:
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, Status, StatusCode

        operation = "chat" if call.endpoint == "chat.completions" else "embeddings"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": call.model_name,
            "gen_ai.response.model": call.model.name if call.model is not None else call.model_name,
            "gen_ai.usage.input_tokens": call.prompt_tokens,
            "gen_ai.usage.output_tokens": call.completion_tokens,
            "http.response.status_code": call.status,
            "meshgate.request_id": call.request_id,
            "meshgate.stream": call.stream,
            "meshgate.cost_usd": call.cost_usd,
        }
        if call.model is not None:
            attributes["gen_ai.system"] = call.model.provider
        if call.principal is not None:
            attributes["meshgate.team"] = call.principal.team
        if call.ttft_ms is not None:
            attributes["meshgate.ttft_ms"] = call.ttft_ms
        if call.error is not None:
            attributes["error.type"] = call.error.kind
        started = int(call.started_wall * 1e9)
        span = self.tracing.tracer.start_span(
            f"{operation} {call.model_name}",
            context=extract(dict(call.headers)),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=started,
        )
        if call.status >= 500 or call.status == 499:
            span.set_status(Status(StatusCode.ERROR, call.error.kind if call.error else str(call.status)))
        span.end(end_time=started + int(call.latency_ms * 1e6))
