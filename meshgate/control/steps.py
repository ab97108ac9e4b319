"""The control steps of the call pipeline: authorize the model, reserve rate limits and budget."""

from __future__ import annotations

import logging
import math
import time

from meshgate.control.budget import NANO, BudgetLedger, BudgetRefusal, BudgetScope, Reservation, to_nano
from meshgate.control.policy import Policy, Principal
from meshgate.control.ratelimit import Decision, RateLimiter, Scope
from meshgate.errors import BudgetExceeded, MeshError, RateLimited
from meshgate.gateway.capabilities import REFUSED, refused
from meshgate.gateway.pipeline import ORDER_AUTHORIZE, ORDER_LIMITS, Call, Step
from meshgate.protocol import ChatCompletionRequest, message_text

log = logging.getLogger("meshgate.control")

#: Output tokens assumed when neither the request nor the model's profile bounds them.
DEFAULT_OUTPUT_ESTIMATE = 4096

#: The adjective of a budget period, for messages.
PERIOD_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}


def worst_case(call: Call) -> tuple[int, int]:
    """Upper bounds on a call's (prompt, completion) tokens, known before it runs.

    A token is at least one byte of UTF-8 for the tokenizers in use, so the prompt's byte length
    bounds its tokens (plus a few per message for the chat template)."""
    request = call.request
    assert call.model is not None
    if isinstance(request, ChatCompletionRequest):
        prompt = sum(len(message_text(m.content).encode()) + 8 for m in request.messages)
        profile = call.model.profile
        ceiling = profile.max_output_tokens or profile.context_window
        output = request.output_limit or ceiling or DEFAULT_OUTPUT_ESTIMATE
        # The capability check refused a larger limit already; this keeps the estimate sane anyway.
        return prompt, min(output, ceiling) if ceiling else output
    inputs = request.inputs()
    return sum(len(item.encode()) + 2 if isinstance(item, str) else len(item) for item in inputs), 0


def worst_case_tokens(call: Call) -> int:
    return sum(worst_case(call))


class AuthorizeModel(Step):
    name = "authorize-model"
    order = ORDER_AUTHORIZE

    async def before(self, call: Call) -> None:
        try:
            Policy.authorize(call.principal, "model", call.model_name, "use")
        except MeshError as exc:
            refused(call, exc)
            raise


def scopes_for(principal: Principal, call: Call) -> list[Scope]:
    scopes = []
    if principal.key_limits.rpm or principal.key_limits.tpm:
        scopes.append(Scope(f"key:{principal.key_id}", principal.key_limits.rpm, principal.key_limits.tpm))
    if principal.team_limits.rpm or principal.team_limits.tpm:
        scopes.append(Scope(f"team:{principal.team}", principal.team_limits.rpm, principal.team_limits.tpm))
    assert call.model is not None
    config = call.model.config
    if config.rpm or config.tpm:
        scopes.append(Scope(f"model:{call.model_name}", config.rpm, config.tpm))
    return scopes


class RateLimit(Step):
    name = "rate-limit"
    order = ORDER_LIMITS

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def before(self, call: Call) -> None:
        scopes = scopes_for(call.principal, call)
        if not scopes:
            return
        estimate = worst_case_tokens(call)
        decision = await self.limiter.acquire(scopes, estimate)
        if not decision.admitted:
            assert decision.refused_scope is not None
            scope = decision.refused_scope
            limit = scope.rpm if decision.refused_limit == "requests" else scope.tpm
            unit = "requests" if decision.refused_limit == "requests" else "tokens"
            extra = f" (this request may use up to {estimate} tokens)" if unit == "tokens" else ""
            error = RateLimited(
                f"Rate limit reached for {scope.name}: {limit} {unit} per minute{extra}. "
                f"Try again in {math.ceil(decision.reset_seconds)}s.",
                retry_after=max(1, math.ceil(decision.reset_seconds)),
            )
            raise refused(call, error)
        call.response_headers.update(decision.headers())
        call.notes["rate_limit"] = (scopes, decision, estimate)

    async def after(self, call: Call) -> None:
        reserved: tuple[list[Scope], Decision, int] | None = call.notes.get("rate_limit")
        if reserved is None:
            return
        scopes, decision, estimate = reserved
        used = call.prompt_tokens + call.completion_tokens
        try:
            await self.limiter.adjust(scopes, decision.window, used - estimate)
        except Exception as exc:  # the limit errs on the safe side (over-counted) until the window ends
            log.warning("rate limit: correcting the token charge failed (%s)", type(exc).__name__)


def budget_scopes(principal: Principal) -> list[BudgetScope]:
    scopes = []
    key, team = principal.key_limits, principal.team_limits
    if key.budget_usd is not None and key.budget_period:
        scopes.append(BudgetScope("key", principal.key_id, key.budget_usd, key.budget_period))
    if team.budget_usd is not None and team.budget_period:
        scopes.append(BudgetScope("team", principal.team, team.budget_usd, team.budget_period))
    return scopes


class Budget(Step):
    """Reserve the worst-case cost before the call; settle the real cost after it."""

    name = "budget"
    order = ORDER_LIMITS + 50

    def __init__(self, ledger: BudgetLedger) -> None:
        self.ledger = ledger

    async def before(self, call: Call) -> None:
        scopes = budget_scopes(call.principal)
        if not scopes:
            return
        assert call.model is not None
        price = call.model.config.price
        if not (price.input or price.output):
            return  # free models (local ones) cannot spend a budget
        prompt, output = worst_case(call)
        amount = to_nano((prompt * price.input + output * price.output) / 1_000_000)
        outcome = await self.ledger.reserve(scopes, amount)
        if isinstance(outcome, BudgetRefusal):
            scope = outcome.scope
            wait = max(1, math.ceil(outcome.reset_at - time.time()))
            error = BudgetExceeded(
                f"The {scope.kind} `{scope.name}` has spent ${outcome.spent_usd:.4f} of its "
                f"${scope.limit_usd:g} {PERIOD_ADJECTIVE.get(scope.period, scope.period)} budget; this request "
                f"could cost up to ${amount / NANO:.4f}. The budget renews in {wait}s.",
                retry_after=wait,
            )
            raise refused(call, error)
        call.notes["budget"] = outcome

    async def after(self, call: Call) -> None:
        if REFUSED in call.notes:
            # Refused here or by an earlier step: nothing went upstream, so nothing was spent. The
            # pipeline estimated tokens as for a call cut short; this step's `after` runs before
            # those of the rate limit, usage, audit and metrics steps, so they all see $0.
            call.prompt_tokens = call.completion_tokens = 0
            call.cost_usd = 0.0
        reservation: Reservation | None = call.notes.get("budget")
        if reservation is None:
            return
        try:
            await self.ledger.settle(reservation, to_nano(call.cost_usd))
        except Exception as exc:  # the reservation stays counted: errs on the side of the budget
            log.warning("budget: settling failed (%s)", type(exc).__name__)
