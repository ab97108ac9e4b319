"""Prometheus metrics, served at GET /metrics (needs the grant metrics:*:read).

One registry per runtime, filled by the metrics step as calls end, plus values read at scrape time
(usage-queue depth, errors refused before any model was called).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.errors import UpstreamError
from meshgate.gateway.pipeline import Call, Step
from meshgate.observe.counters import Counters
from meshgate.store import WriterStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATE_BUCKETS = (1, 5, 10, 20, 40, 60, 100, 200, 500, 1000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "meshgate_requests", "Model calls by model, team and status", ["model", "team", "status"], registry=r
        )
        self.latency = Histogram(
            "meshgate_request_latency_seconds", "Whole call latency", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "meshgate_time_to_first_token_seconds",
            "Time to the first output token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tps = Histogram(
            "meshgate_tokens_per_second",
            "Output tokens per second after the first token",
            ["model"],
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("meshgate_tokens", "Tokens by model and direction", ["model", "direction"], registry=r)
        self.cost = Counter("meshgate_cost_usd", "Cost in USD by model and team", ["model", "team"], registry=r)
        self.rejections = Counter(
            "meshgate_rejections", "Calls refused by rate limits and budgets", ["reason", "team"], registry=r
        )
        self.upstream_errors = Counter(
            "meshgate_upstream_errors", "Upstream failures by provider and kind", ["provider", "kind"], registry=r
        )
        self.deployment_calls = Counter(
            "meshgate_deployment_requests",
            "Calls answered by each deployment of a route (a flat model is its own deployment)",
            ["model", "deployment"],
            registry=r,
        )
        self.failovers = Counter(
            "meshgate_failovers",
            "Deployments that failed a call before its first byte and handed it on, by reason",
            ["model", "deployment", "reason"],
            registry=r,
        )
        self.cache_results = Counter(
            "meshgate_cache_results",
            "Cache lookups by model and result (hit, semantic-hit, miss, bypass)",
            ["model", "result"],
            registry=r,
        )
        self.cache_saved = Counter(
            "meshgate_cache_saved_usd", "Upstream cost saved by cache hits, in USD, by model", ["model"], registry=r
        )
        self.guard_findings = Counter(
            "meshgate_guard_findings",
            "What guards found and did, by guard, direction, detector, kind and action (never values)",
            ["guard", "direction", "detector", "kind", "action"],
            registry=r,
        )
        self.in_flight = Gauge("meshgate_in_flight_requests", "Model calls in progress", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RuntimeCollector(Collector):
    """Values read when scraped: the usage writer's queue, and errors counted at the HTTP edge.

    Handed what it reads (the runtime passes them in): observe never imports the gateway's runtime.
    `usage_stats` answers None before the usage writer exists."""

    def __init__(self, usage_stats: Callable[[], WriterStats | None], counters: Counters) -> None:
        self.usage_stats = usage_stats
        self.counters = counters

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.usage_stats()
        depth = GaugeMetricFamily("meshgate_usage_queue_depth", "Usage records waiting to be written")
        written = CounterMetricFamily("meshgate_usage_records_written", "Usage records written")
        dropped = CounterMetricFamily("meshgate_usage_records_dropped", "Usage records dropped (buffer full)")
        failed = CounterMetricFamily("meshgate_usage_write_failures", "Usage batches that failed and were retried")
        if stats is not None:
            depth.add_metric([], stats.queue_depth)
            written.add_metric([], stats.written)
            dropped.add_metric([], stats.dropped)
            failed.add_metric([], stats.failed_batches)
        yield from (depth, written, dropped, failed)
        errors = CounterMetricFamily(
            "meshgate_http_errors", "Error responses by status and kind", labels=["status", "kind"]
        )
        for (status, kind), count in self.counters.errors.items():
            errors.add_metric([str(status), kind], count)
        yield errors


class MetricsStep(Step):
    name = "metrics"
    order = 1  # first in, last out: sees every call that reached the pipeline's steps

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def before(self, call: Call) -> None:
        self.metrics.in_flight.inc()
        call.notes["in_flight"] = True

    async def after(self, call: Call) -> None:
        m = self.metrics
        if call.notes.pop("in_flight", False):
            m.in_flight.dec()
        team = call.principal.team if call.principal is not None else "-"
        model = call.model_name if call.model is not None else "-"
        m.requests.labels(model, team, str(call.status)).inc()
        m.latency.labels(model).observe(call.latency_ms / 1000)
        if call.ttft_ms is not None:
            m.ttft.labels(model).observe(call.ttft_ms / 1000)
            generating = (call.latency_ms - call.ttft_ms) / 1000
            if call.completion_tokens > 1 and generating > 0:
                m.tps.labels(model).observe((call.completion_tokens - 1) / generating)
        m.tokens.labels(model, "in").inc(call.prompt_tokens)
        m.tokens.labels(model, "out").inc(call.completion_tokens)
        if call.cost_usd:
            m.cost.labels(model, team).inc(call.cost_usd)
        ctx = call.ctx
        if ctx.deployment is not None:
            m.deployment_calls.labels(model, ctx.deployment).inc()
        for deployment, reason in ctx.failovers:
            m.failovers.labels(model, deployment, reason).inc()
        if call.cache is not None:
            m.cache_results.labels(model, call.cache).inc()
            if call.cost_saved_usd:
                m.cache_saved.labels(model).inc(call.cost_saved_usd)
        error = call.error
        if error is not None:
            if error.kind in ("rate_limited", "budget_exceeded"):
                m.rejections.labels(error.kind, team).inc()
            if isinstance(error, UpstreamError):
                m.upstream_errors.labels(
                    error.provider or (call.model.provider if call.model else "-"), error.kind
                ).inc()


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


ROUTES = [Route("/metrics", metrics_endpoint, methods=["GET"])]
