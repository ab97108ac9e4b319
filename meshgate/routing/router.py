"""A route: one model name served by deployments, with failover before the first byte.

A call tries the route's deployments in the order its strategy gives (strategies.py), then the
deployments of its fallbacks (other model names, in order; their own fallbacks are not followed, so
a call never loops). A deployment is skipped, not tried, when its circuit is open, when the call's
data class does not allow its hosting, or when it cannot do what the request asks (its capability
profile, its context window). On a connect error, a timeout, a 429 or a 5xx, the next one is tried,
after an exponential backoff with full jitter and not before what a Retry-After asked, within the
route's deadline and at most `max_attempts` attempts.

Failover happens only before the first byte: a stream is switched to another deployment only while
nothing of it reached the client. What breaks after that ends the stream with an error event (the
pipeline records it as cut); a model is never switched in the middle of an answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from meshgate.errors import (
    ContextLengthExceeded,
    MeshError,
    Overloaded,
    RateLimited,
    RetryLater,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from meshgate.gateway.capabilities import check_chat
from meshgate.gateway.pipeline import estimate_prompt_tokens
from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.base import (
    CallContext,
    CapabilityProfile,
    ChatModel,
    EmbeddingInput,
    EmbeddingModel,
    Embeddings,
    Model,
)
from meshgate.providers.streaming import Deliver, PushStream, Valve, relay
from meshgate.routing import strategies
from meshgate.routing.breaker import Breaker, BreakerBoard, Ewma
from meshgate.routing.config import RouteConfig

log = logging.getLogger("meshgate.routing")
T = TypeVar("T")

#: Backoff before the k-th retry (k >= 1 after the first switch): uniform in [0, min(CAP, BASE * 2^(k-1))].
BACKOFF_BASE = 0.05
BACKOFF_CAP = 1.0


class AllDeploymentsFailed(UpstreamError):
    """Every deployment a call could use failed (502); the message says how each one failed."""

    default_code = "all_deployments_failed"
    kind = "all_deployments_failed"


class NoDeploymentAvailable(ServiceUnavailable):
    """Every deployment of the route has its circuit open (503, with Retry-After)."""

    default_code = "no_deployment_available"
    kind = "no_deployment_available"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


def failover_reason(error: MeshError) -> str | None:
    """Why `error` moves the call to the next deployment ("rate_limited", "timeout", "http_503",
    "unreachable", ...), or None when it does not: the request itself is at fault (a 400), or the
    deployment refused meshgate's credentials (fix the configuration, do not hide it)."""
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, Overloaded):
        return "overloaded"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamError):
        status = error.upstream_status
        if status is None:
            return "unreachable"
        if status == 429 or status >= 500:
            return f"http_{status}"
        return None
    if isinstance(error, ServiceUnavailable):
        return "unavailable"
    return None


@dataclass(eq=False)
class Deployment:
    """One model behind a route, with its weight and its live state."""

    name: str
    model: Model
    weight: int
    breaker: Breaker
    ewma: Ewma

    @property
    def latency(self) -> float | None:
        return self.ewma.value if self.ewma.samples else None

    @property
    def unit_price(self) -> float:
        price = self.model.config.price
        return price.input + price.output

    @property
    def hosting(self) -> str:
        return self.model.hosting


def union_profile(profiles: Sequence[CapabilityProfile]) -> CapabilityProfile:
    """What a route can do: what any of its deployments can (each call then goes only to the
    deployments that can do what it asks)."""
    values: dict[str, Any] = {}
    for item in fields(CapabilityProfile):
        seen = [getattr(profile, item.name) for profile in profiles]
        if isinstance(seen[0], bool):
            values[item.name] = any(seen)
        elif item.name in ("context_window", "max_output_tokens"):
            values[item.name] = None if None in seen else max(seen)
        elif item.name == "embedding_dimensions":
            values[item.name] = seen[0]
        else:
            values[item.name] = max(seen)
    return CapabilityProfile(**values)


@dataclass(slots=True)
class _Attempts:
    """The failover loop's bookkeeping for one call."""

    route: RouteBase
    ctx: CallContext
    plan: list[Deployment]
    deadline: float
    limit: int
    tried: int = 0
    errors: list[tuple[str, MeshError]] = field(default_factory=list)

    async def next(self) -> Deployment | None:
        """The next deployment to try (after its backoff), or None when the call must give up."""
        while self.plan and self.tried < self.limit:
            deployment = self.plan.pop(0)
            now = time.monotonic()
            wait = 0.0
            if self.tried >= 2:
                wait = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self.tried - 1)))
            if not deployment.breaker.allows(now + wait):
                continue  # opened meanwhile (another call, or another replica, saw it fail)
            if now + wait >= self.deadline:
                return None
            if wait:
                await asyncio.sleep(wait)
            deployment.breaker.begin(time.monotonic())
            self.tried += 1
            return deployment
        return None

    def failed(self, deployment: Deployment, error: MeshError, reason: str) -> None:
        now = time.monotonic()
        deployment.breaker.failed(now)
        if isinstance(error, RetryLater):
            # Honour Retry-After: not tried again (by any call) before it says.
            deployment.breaker.open(now, float(error.retry_after))
        self.ctx.failovers.append((deployment.name, reason))
        self.errors.append((deployment.name, error))
        log.info("call %s: deployment %s failed (%s): trying the next", self.ctx.request_id, deployment.name, reason)

    def served(self, deployment: Deployment, began: float) -> None:
        deployment.breaker.succeeded()
        deployment.ewma.add(time.monotonic() - began)
        self.ctx.deployment = deployment.name
        self.ctx.served_by = deployment.model

    def give_up(self) -> MeshError:
        if not self.errors:
            return UpstreamTimeout(f"The route `{self.route.name}` ran out of time before any deployment answered.")
        if len(self.errors) == 1:
            return self.errors[0][1]
        if all(isinstance(error, RateLimited) for _, error in self.errors):
            wait = min(error.retry_after for _, error in self.errors if isinstance(error, RateLimited))
            return RateLimited(f"Every deployment of `{self.route.name}` is rate limiting.", retry_after=wait)
        detail = "; ".join(f"{name}: {error.message}" for name, error in self.errors)
        return AllDeploymentsFailed(
            f"Every deployment of `{self.route.name}` that was tried failed ({detail})", provider="route"
        )


class RouteBase(Model):
    """What the chat and embedding routes share: deployments, the plan of a call, lifecycle."""

    provider = "route"
    config: RouteConfig

    def __init__(
        self,
        config: RouteConfig,
        deployments: list[Deployment],
        board: BreakerBoard,
        lookup: Callable[[str], Model | None],
        allowed_hosting: Mapping[str, Sequence[str]],
        timeout: float,
    ) -> None:
        super().__init__(config, union_profile([d.model.profile for d in deployments]))
        self.deployments = deployments
        self.board = board
        self.lookup = lookup
        self.allowed_hosting = allowed_hosting
        self.timeout = config.deadline or timeout
        # The route's hosting is the widest of its deployments' (what /v1/models shows); calls
        # are checked per deployment.
        self.hosting = next(
            (h for h in ("cloud", "private", "local") if any(d.hosting == h for d in deployments)), "cloud"
        )
        self._wrapped: dict[int, Deployment] = {}
        #: The hostings of the route's own deployments (`allows`, on every call).
        self._hostings = frozenset(d.hosting for d in deployments)
        #: Per deployment: its profile, and whether it is the route's (then `unfit` checks nothing more).
        self._same_profile: dict[Deployment, tuple[CapabilityProfile, bool]] = {}

    # start() and close() stay no-ops: the runtime starts and closes the deployments' models itself,
    # because a deployment that a config reload left unchanged outlives its route object.

    def ready(self) -> bool:
        return any(d.model.ready() for d in self.deployments)

    def describe(self) -> dict[str, Any]:
        return {
            "routing": self.config.routing,
            "deployments": [
                {
                    "name": d.name,
                    "provider": d.model.provider,
                    "hosting": d.hosting,
                    "region": d.model.config.region,
                    "weight": d.weight,
                    "circuit": d.breaker.state,
                }
                for d in self.deployments
            ],
            "fallbacks": list(self.config.fallbacks),
        }

    # -- planning ----------------------------------------------------------------------------------

    def own_order(self, ctx: CallContext) -> list[Deployment]:
        sticky = None
        if self.config.sticky is not None:
            sticky = ctx.sticky_key
        return strategies.order(self.config.routing, self.deployments, sticky)

    def _fallback_deployments(self, ctx: CallContext) -> list[Deployment]:
        found: list[Deployment] = []
        for name in self.config.fallbacks:
            model = self.lookup(name)
            if model is None:
                continue
            if isinstance(model, RouteBase):
                found += model.own_order(ctx)
            else:
                found.append(self._wrap(model))
        return found

    def _wrap(self, model: Model) -> Deployment:
        """A flat model used as a fallback, as a deployment with its own breaker."""
        deployment = self._wrapped.get(id(model))
        if deployment is None or deployment.model is not model:
            deployment = Deployment(
                model.name, model, 1, self.board.breaker(model.name, self.config.breaker), self.board.ewma(model.name)
            )
            self._wrapped[id(model)] = deployment
        return deployment

    def allows(self, data_class: str) -> bool:
        """Whether a call of `data_class` has any deployment (or fallback) it may go to."""
        allowed = self.allowed_hosting.get(data_class, ())
        if not self._hostings.isdisjoint(allowed):
            return True
        for name in self.config.fallbacks:
            model = self.lookup(name)
            if model is None:
                continue
            hostings = [d.hosting for d in model.deployments] if isinstance(model, RouteBase) else [model.hosting]
            if any(h in allowed for h in hostings):
                return True
        return False

    def unfit(self, deployment: Deployment, request: Any, prompt_tokens: Callable[[], int]) -> MeshError | None:
        """Why `deployment` cannot serve `request` (None when it can); `prompt_tokens()` is the
        call's prompt estimate, made once per call however many deployments ask for it."""
        return None

    async def failover(self, ctx: CallContext, request: Any, attempt: Callable[[Deployment], Awaitable[T]]) -> T:
        """`attempt` on the planned deployments in turn, until one answers: a failure that says the
        deployment is down moves on; any other is the call's answer."""
        attempts = self.plan(ctx, request)
        while (deployment := await attempts.next()) is not None:
            began = time.monotonic()
            try:
                result = await attempt(deployment)
            except MeshError as exc:
                reason = failover_reason(exc)
                if reason is None:
                    deployment.breaker.neutral()
                    raise
                attempts.failed(deployment, exc, reason)
                continue
            attempts.served(deployment, began)
            return result
        raise attempts.give_up()

    def plan(self, ctx: CallContext, request: Any) -> _Attempts:
        allowed = self.allowed_hosting.get(ctx.data_class, ())
        now = time.monotonic()
        plan: list[Deployment] = []
        seen: set[str] = set()
        refusal: MeshError | None = None
        circuits_open: list[Deployment] = []
        prompt_tokens = _Once(estimate_prompt_tokens, request)
        order = self.own_order(ctx)
        if self.config.fallbacks:
            order += self._fallback_deployments(ctx)
        for deployment in order:
            if deployment.name in seen or deployment.hosting not in allowed:
                continue
            seen.add(deployment.name)
            if not deployment.breaker.allows(now):
                circuits_open.append(deployment)
                continue
            problem = self.unfit(deployment, request, prompt_tokens)
            if problem is not None:
                refusal = refusal or problem
                continue
            plan.append(deployment)
        if not plan:
            if circuits_open:
                wait = min(d.breaker.open_until for d in circuits_open) - now
                names = ", ".join(d.name for d in circuits_open)
                raise NoDeploymentAvailable(
                    f"No deployment of `{self.name}` is available: their circuits are open after repeated failures "
                    f"({names}); retry in {max(1, round(wait))}s.",
                    retry_after=max(1, round(wait)),
                )
            if refusal is not None:
                raise refusal
            raise ServiceUnavailable(f"The route `{self.name}` has no deployment for this call.")
        limit = self.config.max_attempts or len(plan)
        deadline = ctx.started + self.timeout
        return _Attempts(self, ctx, plan, deadline, limit)

    def _is_route_profile(self, deployment: Deployment, profile: CapabilityProfile) -> bool:
        """`profile == self.profile`, compared once per deployment and profile, not on every call."""
        known = self._same_profile.get(deployment)
        if known is None or known[0] is not profile:
            known = self._same_profile[deployment] = (profile, profile == self.profile)
        return known[1]


class _Once:
    """`fn(arg)`, computed on the first call only (the prompt estimate, asked per deployment)."""

    __slots__ = ("arg", "fn", "value")

    def __init__(self, fn: Callable[[Any], int], arg: Any) -> None:
        self.fn, self.arg = fn, arg
        self.value: int | None = None

    def __call__(self) -> int:
        if self.value is None:
            self.value = self.fn(self.arg)
        return self.value


class RoutedChatModel(RouteBase, ChatModel):
    def unfit(self, deployment: Deployment, request: Any, prompt_tokens: Callable[[], int]) -> MeshError | None:
        assert isinstance(request, ChatCompletionRequest)
        profile = deployment.model.profile
        if not self._is_route_profile(deployment, profile):  # the capability step checked the route's own
            try:
                check_chat(request, profile)
            except MeshError as exc:
                return exc
        window = profile.context_window
        if window is not None and prompt_tokens() + (request.output_limit or 0) > window:
            return ContextLengthExceeded(
                f"The request does not fit the context window of deployment `{deployment.name}` ({window} tokens)."
            )
        return None

    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        async def answer(deployment: Deployment) -> dict[str, Any]:
            assert isinstance(deployment.model, ChatModel)
            return await deployment.model.complete(request, call)

        result = await self.failover(call, request, answer)
        result["model"] = self.name  # the name the client called, not the deployment's
        return result

    def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        return RoutedStream(self, request, call)


class RoutedStream(PushStream):
    """A route's stream: its first chunk found by failover, the rest from the deployment that sent it
    (pushed when that deployment's stream can push)."""

    def __init__(self, route: RoutedChatModel, request: ChatCompletionRequest, ctx: CallContext) -> None:
        self.route, self.request, self.ctx = route, request, ctx
        self.inner: AsyncIterator[dict[str, Any]] | None = None

    async def __anext__(self) -> dict[str, Any]:
        if self.inner is not None:
            chunk = await self.inner.__anext__()
        else:
            first = await self.route.failover(self.ctx, self.request, self._open)
            if first is None:
                raise StopAsyncIteration
            chunk = first
        chunk["model"] = self.route.name  # the name the client called, not the deployment's
        return chunk

    async def _open(self, deployment: Deployment) -> dict[str, Any] | None:
        """The deployment's stream up to its first chunk (None: it ended without one); kept on success."""
        assert isinstance(deployment.model, ChatModel)
        stream = deployment.model.stream(self.request, self.ctx)
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _close(stream)
            raise
        self.inner = stream
        return first

    async def relay(self, deliver: Deliver, valve: Valve) -> None:
        assert self.inner is not None
        name = self.route.name

        def renamed(chunk: dict[str, Any]) -> None:
            chunk["model"] = name  # the name the client called, not the deployment's
            deliver(chunk)

        await relay(self.inner, renamed, valve)

    async def aclose(self) -> None:
        if self.inner is not None:
            await _close(self.inner)


async def _close(stream: AsyncIterator[dict[str, Any]]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()


class RoutedEmbeddingModel(RouteBase, EmbeddingModel):
    async def embed(self, texts: EmbeddingInput, call: CallContext, dimensions: int | None = None) -> Embeddings:
        async def vectors(deployment: Deployment) -> Embeddings:
            assert isinstance(deployment.model, EmbeddingModel)
            return await deployment.model.embed(texts, call, dimensions)

        return await self.failover(call, None, vectors)
