"""OpenTelemetry: spans reach an OTLP/HTTP collector (a real one on loopback), without content."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, free_port, make_runtime, upstream_models_yaml

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_spans_are_exported(tmp_path: Path, fake_upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    runtime = make_runtime(tmp_path, upstream_models_yaml(fake_upstream.base_url))
    client = await AppClient.started(runtime)
    secret_prompt = "the launch code is 0000"
    try:
        ok = await client.http.post(
            "/v1/chat/completions",
            json={"model": "bench", "messages": [{"role": "user", "content": secret_prompt}]},
            headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
        )
        assert ok.status_code == 200
        failed = await client.http.post(
            "/v1/chat/completions", json={"model": "fail500", "messages": [{"role": "user", "content": "x"}]}
        )
        assert failed.status_code == 502
    finally:
        await client.http.aclose()
        await runtime.stop()  # flushes the span processor
        await runner.cleanup()
    spans = [s for m in received for rs in m.resource_spans for ss in rs.scope_spans for s in ss.spans]
    by_name = {s.name: s for s in spans}
    assert {"chat bench", "chat fail500"} <= set(by_name)
    span = by_name["chat bench"]
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["gen_ai.request.model"].string_value == "bench"
    assert attributes["gen_ai.usage.input_tokens"].int_value > 0
    assert attributes["gen_ai.usage.output_tokens"].int_value > 0
    assert attributes["meshgate.request_id"].string_value == ok.headers["x-request-id"]
    assert span.trace_id.hex() == TRACE_ID  # a child of the caller's trace
    assert span.end_time_unix_nano > span.start_time_unix_nano
    error_span = by_name["chat fail500"]
    assert error_span.status.code == 2  # STATUS_CODE_ERROR
    assert secret_prompt not in str(received)
