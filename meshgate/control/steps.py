"""The control steps of the call pipeline: authorize the model, reserve rate limits and budget.

"rate-limit" and "budget" share one `Admission` (control/admission.py): the first of them with
something to check decides both in one go (one Redis round trip with replicas), and each raises
its own refusal, so that audit records and errors read as before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from meshgate.control.admission import Admission, Verdict
from meshgate.control.budget import NANO, BudgetRefusal, BudgetScope, Reservation, to_nano
from meshgate.control.policy import Policy, Principal
from meshgate.control.ratelimit import Scope
from meshgate.errors import BudgetExceeded, MeshError, RateLimited
from meshgate.gateway.capabilities import REFUSED, refused
from meshgate.gateway.pipeline import ORDER_AUTHORIZE, ORDER_LIMITS, Call, Step
from meshgate.protocol import ChatCompletionRequest, message_text

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


#: Where the steps leave what they admitted (a Ticket) in `call.notes`.
ADMISSION = "admission"


@dataclass(frozen=True)
class Ticket:
    """What a call was admitted with, for the correction after it."""

    owner: str  # the step that asked (and corrects after the call)
    scopes: list[Scope]
    estimate: int  # worst-case tokens charged
    amount: int  # worst-case nano-dollars reserved in each budget
    verdict: Verdict


def budget_request(call: Call, prompt: int, output: int) -> tuple[list[BudgetScope], int]:
    """The budgets a call falls under and its worst-case cost in nano-dollars ([] for a free model)."""
    scopes = budget_scopes(call.principal)
    if not scopes:
        return [], 0
    assert call.model is not None
    price = call.model.config.price
    if not (price.input or price.output):
        return [], 0  # free models (local ones) cannot spend a budget
    return scopes, to_nano((prompt * price.input + output * price.output) / 1_000_000)


async def correct(admission: Admission, call: Call, ticket: Ticket) -> None:
    """Correct the token charge with the real usage and settle the budget with the real cost, in
    one go (one script call on Redis, most often after the response: see control/admission.py)."""
    reservation = ticket.verdict.budget if isinstance(ticket.verdict.budget, Reservation) else None
    used = call.prompt_tokens + call.completion_tokens
    decision = ticket.verdict.decision
    await admission.correct(ticket.scopes, decision, used - ticket.estimate, reservation, to_nano(call.cost_usd))


class RateLimit(Step):
    """Charge the rate limits; with them, reserve the budgets (the budget step raises their refusal)."""

    name = "rate-limit"
    order = ORDER_LIMITS

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    async def before(self, call: Call) -> None:
        scopes = scopes_for(call.principal, call)
        if not scopes:
            return  # the budget step decides alone
        prompt, output = worst_case(call)
        estimate = prompt + output
        budgets, amount = budget_request(call, prompt, output)
        verdict = await self.admission.admit(scopes, estimate, budgets, amount)
        decision = verdict.decision
        assert decision is not None
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
        call.notes[ADMISSION] = Ticket(self.name, scopes, estimate, amount, verdict)

    async def after(self, call: Call) -> None:
        # After the budget step's `after` (descending order), which zeroes a refused call's usage.
        ticket: Ticket | None = call.notes.get(ADMISSION)
        if ticket is not None and ticket.owner == self.name:
            await correct(self.admission, call, ticket)


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

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    async def before(self, call: Call) -> None:
        ticket: Ticket | None = call.notes.get(ADMISSION)
        if ticket is None:  # no rate limit: reserve here
            prompt, output = worst_case(call)
            budgets, amount = budget_request(call, prompt, output)
            if not budgets:
                return
            ticket = Ticket(self.name, [], 0, amount, await self.admission.admit([], 0, budgets, amount))
            call.notes[ADMISSION] = ticket
        outcome = ticket.verdict.budget
        if isinstance(outcome, BudgetRefusal):
            scope = outcome.scope
            wait = max(1, math.ceil(outcome.reset_at - time.time()))
            error = BudgetExceeded(
                f"The {scope.kind} `{scope.name}` has spent ${outcome.spent_usd:.4f} of its "
                f"${scope.limit_usd:g} {PERIOD_ADJECTIVE.get(scope.period, scope.period)} budget; this request "
                f"could cost up to ${ticket.amount / NANO:.4f}. The budget renews in {wait}s.",
                retry_after=wait,
            )
            raise refused(call, error)

    async def after(self, call: Call) -> None:
        if REFUSED in call.notes:
            # Refused here or by an earlier step: nothing went upstream, so nothing was spent. The
            # pipeline estimated tokens as for a call cut short; this step's `after` runs before
            # those of the rate limit, usage, audit and metrics steps, so they all see $0.
            call.prompt_tokens = call.completion_tokens = 0
            call.cost_usd = 0.0
        ticket: Ticket | None = call.notes.get(ADMISSION)
        if ticket is not None and ticket.owner == self.name:
            await correct(self.admission, call, ticket)
