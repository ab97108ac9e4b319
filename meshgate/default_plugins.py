"""meshgate's own features, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshgate.hookspecs import hookimpl

if TYPE_CHECKING:
    from meshgate.gateway.pipeline import Step
    from meshgate.gateway.runtime import Runtime
    from meshgate.providers.base import ProviderType


@hookimpl
def register_providers(register: Callable[[ProviderType], None]) -> None:
    # Imported here so that `meshgate --help` does not load llama.cpp or onnxruntime.
    from meshgate.providers import anthropic, azure_openai, bedrock, cohere, gemini, mistral, openai_compatible
    from meshgate.providers.local import chat, embedding

    register(openai_compatible.PROVIDER)
    register(anthropic.PROVIDER)
    register(azure_openai.PROVIDER)
    register(mistral.PROVIDER)
    register(gemini.PROVIDER)
    register(cohere.PROVIDER)
    register(bedrock.PROVIDER)
    register(chat.PROVIDER)
    register(embedding.PROVIDER)


@hookimpl
def register_pipeline_steps(register: Callable[[Step], None], runtime: Runtime) -> None:
    from meshgate.control.admission import Admission
    from meshgate.control.steps import AuthorizeModel, Budget, RateLimit
    from meshgate.gateway.capabilities import CapabilityCheck
    from meshgate.observe.audit_step import AuditStep
    from meshgate.observe.metrics import MetricsStep
    from meshgate.observe.usage import UsageStep

    register(MetricsStep(runtime.metrics))
    if runtime.tracing is not None:
        from meshgate.observe.tracing import TracingStep

        register(TracingStep(runtime.tracing))
    register(AuthorizeModel())
    from meshgate.routing.step import DataClassRouting

    data_class_routing = DataClassRouting(lambda: runtime.allowed_hosting)
    register(data_class_routing)
    # One admission for both steps: on Redis, one round trip decides rate limits and budgets.
    admission = Admission.of(runtime.limiter, runtime.ledger)
    register(RateLimit(admission))
    register(Budget(admission))
    register(CapabilityCheck())
    from meshgate.knowledge.step import KnowledgeStep

    register(KnowledgeStep(lambda: runtime.knowledge, data_class_routing.enforce))
    from meshgate.guards.step import GuardStep

    register(
        GuardStep(
            lambda: runtime.config.guard_engine,
            lambda: runtime.reviews,
            data_class_routing.enforce,
            lambda *labels_and_n: runtime.metrics.guard_findings.labels(*labels_and_n[:5]).inc(labels_and_n[5]),
        )
    )
    if runtime.usage is not None:
        register(UsageStep(runtime.usage))
    if runtime.audit_writer is not None:
        register(AuditStep(runtime.audit_writer, runtime.settings.audit_content))
    from meshgate.cache.step import build_cache_step

    s = runtime.settings
    cache = build_cache_step(
        runtime.cache_config_for, runtime.config.cache, runtime.models, runtime.lookup, s.data_dir, s.redis_url
    )
    if cache is not None:
        register(cache)


@hookimpl
async def shutdown(runtime: Runtime) -> None:
    from meshgate.cache.step import CacheStep

    for step in runtime.pipeline.steps:
        if isinstance(step, CacheStep):
            await step.cache.close()
