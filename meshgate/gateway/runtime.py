"""The live server state: settings, models, database, request log and the pipeline, with their lifecycle.

Built once at startup; the hot path reads it from memory and never waits on the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pluggy

from meshgate import __version__
from meshgate.cache.config import CacheConfig
from meshgate.config import MeshConfig
from meshgate.control.budget import BudgetLedger, BudgetScope, MemoryLedger, RedisLedger
from meshgate.control.oidc import OidcVerifier
from meshgate.control.policy import KeyStore, Policy
from meshgate.control.ratelimit import MemoryLimiter, RateLimiter, RedisLimiter
from meshgate.control.service import ControlService
from meshgate.errors import ConfigError, StartupError
from meshgate.gateway.pipeline import Pipeline, Step
from meshgate.gateway.reload import ConfigReloader, build_models
from meshgate.guards.reviews import ReviewStore
from meshgate.knowledge.service import KnowledgeService
from meshgate.observe.audit import AuditEvent, AuditLog, AuditWriter, Signer
from meshgate.observe.audit_anchor import default_anchor
from meshgate.observe.counters import Counters
from meshgate.observe.metrics import Metrics, RuntimeCollector
from meshgate.observe.tracing import Tracing
from meshgate.providers.base import Model, ProviderContext, ProviderType
from meshgate.routing.breaker import BreakerBoard, RedisBreakerBoard
from meshgate.settings import ServerSettings
from meshgate.store import INSERT_USAGE, BatchWriter, Database, WriterStats, connect, migrate
from meshgate.store.database import redact
from meshgate.store.responses import ResponseStore
from meshgate.store.sqlite import private_dir

log = logging.getLogger("meshgate")


class Runtime:
    def __init__(
        self,
        settings: ServerSettings,
        config: MeshConfig,
        plugins: pluggy.PluginManager,
        provider_types: dict[str, ProviderType],
    ) -> None:
        self.settings = settings
        self.config = config
        self.plugins = plugins
        self.started_at = int(time.time())
        self.provider_types = provider_types
        self.provider_context = ProviderContext(
            data_dir=settings.data_dir,
            request_timeout=settings.request_timeout,
            model_cache=settings.resolved_model_cache,
        )
        #: Circuit breakers and latencies by deployment (shared through Redis once started with it).
        self.board: BreakerBoard = BreakerBoard()
        #: Which hostings each data class may reach; routes hold this very dict (updated in place).
        self.allowed_hosting: dict[str, tuple[str, ...]] = dict(config.data_classes)
        # The models clients call, and the provider models behind them by deployment name.
        self.models, self._leaves = build_models(self, config, {})
        self.db: Database | None = None
        self.usage: BatchWriter | None = None
        self.audit: AuditLog | None = None
        self.audit_writer: AuditWriter | None = None
        self.control: ControlService | None = None
        #: The human review queue of the guards (on the database, once started).
        self.reviews: ReviewStore | None = None
        #: Knowledge banks (on the database, once started).
        self.knowledge: KnowledgeService | None = None
        self.keys: KeyStore | None = None
        #: The Responses API's stored responses (memory, and the database once started).
        self.responses: ResponseStore = ResponseStore()
        self.oidc: OidcVerifier | None = None
        self.policy = Policy(None)
        self.limiter: RateLimiter = MemoryLimiter()
        self.ledger: BudgetLedger = MemoryLedger(self._spent_since)
        self.counters = Counters()
        self.metrics = Metrics()
        self.tracing = Tracing.from_env()
        self.metrics.registry.register(RuntimeCollector(self._usage_stats, self.counters))
        self.pipeline = Pipeline(self.models, [])
        self._started: list[Model] = []
        self.reloads = ConfigReloader(self)

    async def start(self) -> None:
        private_dir(self.settings.data_dir)  # 0700 when created; a warning if others may read it
        self.db = await connect(self.settings.resolved_database_url)
        applied = await migrate(self.db)
        if applied:
            log.info("database migrated: %s", ", ".join(applied))
        self.usage = BatchWriter(self.db, INSERT_USAGE, name="usage")
        await self.usage.start()
        try:
            anchor = default_anchor(self.settings.data_dir, self.settings.audit_anchor)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        self.audit = AuditLog(self.db, Signer.load(self.settings.data_dir), anchor)
        self.audit_writer = AuditWriter(self.audit)
        await self.audit_writer.start()
        self.control = ControlService(self.db, self.audit, actor="system")
        self.reviews = ReviewStore(self.db, self.audit)
        self.responses = ResponseStore(self.db)
        await self.responses.start()
        if self.settings.auth:
            self.keys = KeyStore(self.control)
            await self.keys.start()
        else:
            log.warning(
                "authentication is OFF (--no-auth): anyone who can reach %s may call every model", self.settings.host
            )
        if self.settings.oidc_jwks and self.keys is not None:
            s = self.settings
            self.oidc = OidcVerifier(
                s.oidc_jwks, s.oidc_issuer, s.oidc_audience, s.oidc_team_claim, s.oidc_roles_claim, s.oidc_groups_claim
            )
            await self.oidc.start()
        self.policy = Policy(self.keys, self.oidc)
        if self.settings.redis_url:
            redis_limiter = RedisLimiter(self.settings.redis_url)
            if not await redis_limiter.ping():
                await redis_limiter.close()
                raise StartupError(f"redis_url: cannot reach Redis at {redact(self.settings.redis_url)}")
            self.limiter = redis_limiter
            self.ledger = RedisLedger(self._spent_since, self.settings.redis_url)
            self.board = share_breakers(self.board, self.settings.redis_url)
        await self.board.start()

        steps: list[Step] = []
        self.plugins.hook.register_pipeline_steps(register=steps.append, runtime=self)
        self.pipeline = Pipeline(self.models, steps, capture_content=self.settings.audit_content != "off")

        # Models load side by side; a model that fails to load stops startup with its name.
        async def start_model(model: Model) -> None:
            began = time.monotonic()
            try:
                await model.start()
            except Exception as exc:
                raise StartupError(f"model `{model.name}` ({model.provider}) failed to start: {exc}") from exc
            self._started.append(model)
            log.info("model %s (%s) ready in %.1fs", model.name, model.provider, time.monotonic() - began)

        await asyncio.gather(*(start_model(m) for m in self._leaves.values()))
        self.knowledge = KnowledgeService(
            self.db, self.config.knowledge, self.settings.data_dir, self.lookup, self.audit.record
        )
        await self.knowledge.start()
        await self.audit.record(
            AuditEvent(
                "server.started",
                "system",
                self.config.path,
                {
                    "version": __version__,
                    "config": self.config.path,
                    "models": list(self.models),
                    "auth": self.settings.auth,
                    "audit_content": self.settings.audit_content,
                },
            )
        )
        for result in self.plugins.hook.startup(runtime=self):
            if asyncio.iscoroutine(result):
                await result
        self.reloads.start()

    def cache_config_for(self, model: str) -> CacheConfig:
        """The effective cache configuration of `model` (read per call: a reload changes it)."""
        return self.config.cache_config_for(model)

    def lookup(self, name: str) -> Model | None:
        return self.models.get(name)

    async def stop(self) -> None:
        self.reloads.stop()
        await self.reloads.close_retiring()
        for result in self.plugins.hook.shutdown(runtime=self):
            if asyncio.iscoroutine(result):
                await result
        for model in self._started:
            try:
                await model.close()
            except Exception:
                log.exception("model %s did not close cleanly", model.name)
        self._started.clear()
        if self.knowledge is not None:
            await self.knowledge.close()
        if self.keys is not None:
            await self.keys.stop()
        if self.oidc is not None:
            await self.oidc.stop()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        await self.limiter.close()
        await self.ledger.close()
        await self.board.close()
        await self.responses.stop()
        if self.usage is not None:
            await self.usage.stop()
        if self.audit_writer is not None:
            await self.audit_writer.stop()
        if self.db is not None:
            await self.db.close()

    async def _spent_since(self, scope: BudgetScope, since: float) -> float:
        """USD a key or team spent since `since`, from recorded usage (read once per period).
        Calls refused before going upstream (over budget, for example) spent nothing and are left out."""
        assert self.db is not None
        if self.usage is not None:
            await self.usage.flush()
        column = "key_id" if scope.kind == "key" else "team"
        row = await self.db.fetchone(
            f"SELECT COALESCE(SUM(cost_usd), 0) AS spent FROM usage WHERE {column} = ? AND ts >= ? AND refused = 0",
            (scope.name, since),
        )
        return float(row["spent"]) if row else 0.0

    def _usage_stats(self) -> WriterStats | None:
        return self.usage.stats if self.usage is not None else None

    async def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {f"model:{name}": model.ready() for name, model in self.models.items()}
        checks["database"] = self.db is not None and await self.db.ping()
        if isinstance(self.limiter, RedisLimiter):
            checks["redis"] = await self.limiter.ping()
        return checks


def share_breakers(board: BreakerBoard, redis_url: str) -> BreakerBoard:
    """The breakers moved onto Redis, keeping the ones already made (routes hold them)."""
    shared = RedisBreakerBoard(redis_url)
    shared.breakers, shared.latency = board.breakers, board.latency
    for breaker in shared.breakers.values():
        breaker.board = shared
    return shared
