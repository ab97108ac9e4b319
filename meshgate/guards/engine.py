"""Which guards apply to a call, and what their detectors find in a list of texts.

`Guards` holds the configured policies and detectors (one per loaded mesh.yaml). `plan_for` merges
the rules of every guard that applies to a call (the severest action per detector wins); `scan` runs
each detector a plan needs once per text, in a worker thread, and turns findings into decisions:
block, review, redact (spans per text), flag. A detector that raises fails its guards closed unless a
guard says `on_error: allow`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TypeVar

from meshgate.guards.config import SEVERITY, DetectorSpec, GuardPolicy, Rule
from meshgate.guards.findings import Finding, ScanContext, merge_overlapping
from meshgate.guards.messages import Text
from meshgate.guards.registry import LEXICAL_INJECTION, Detectors, builtin

log = logging.getLogger("meshgate.guards")

#: Detectors that judge what people write, not what tools or documents say: the system prompt and
#: earlier assistant turns are the application's own words.
_USER_ONLY = frozenset({"moderation"})
#: Sources where injection is "indirect": instructions hidden in data the model reads.
INDIRECT_SOURCES = frozenset({"tool", "document"})

#: Texts this short, checked only by pattern detectors, are scanned on the event loop: the work is
#: bounded (tens of microseconds) and cheaper than the hop to a worker thread and back.
INLINE_CHARS = 2000

#: Guard work runs here otherwise: NER and classifiers cost milliseconds per text.
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="meshgate-guards")
T = TypeVar("T")


async def run_in_guard_worker(work: Callable[[], T]) -> T:
    """Run detector work in the guards' threads (the scan API uses the same ones as the pipeline)."""
    return await asyncio.get_running_loop().run_in_executor(_executor, work)


@dataclass(frozen=True)
class ActiveRule:
    guard: str
    detector: str
    rule: Rule
    on_error: str


@dataclass
class Plan:
    """The rules of the guards that apply to one call, merged."""

    guards: tuple[str, ...]
    input: dict[str, list[ActiveRule]]
    output: dict[str, list[ActiveRule]]
    classify: dict[str, str]

    @property
    def holds_output(self) -> bool:
        """An answer that may go to review cannot be streamed as it comes: it is held whole."""
        return any(r.rule.action == "review" for rules in self.output.values() for r in rules)


@dataclass(frozen=True, slots=True)
class Hit:
    """A finding, the rule it fell under and the action that rule takes on it."""

    finding: Finding
    rule: ActiveRule
    action: str
    text_index: int


@dataclass
class Outcome:
    hits: list[Hit] = field(default_factory=list)
    #: Rules whose detector failed, with the error's type name (never its message: it may hold text).
    failures: list[tuple[ActiveRule, str]] = field(default_factory=list)

    def severest(self, action: str) -> Hit | None:
        return next((hit for hit in self.hits if hit.action == action), None)

    def redactions(self) -> dict[int, list[Finding]]:
        spans: dict[int, list[Finding]] = {}
        for hit in self.hits:
            if hit.action == "redact":
                spans.setdefault(hit.text_index, []).append(hit.finding)
        return {index: merge_overlapping(found) for index, found in spans.items()}

    def failed_closed(self) -> tuple[ActiveRule, str] | None:
        return next(((rule, why) for rule, why in self.failures if rule.on_error == "block"), None)


def _matches(patterns: Sequence[str], *values: str) -> bool:
    return not patterns or any(fnmatchcase(value, p) for value in values if value for p in patterns)


class Guards:
    """The guards of one configuration."""

    def __init__(self, policies: Sequence[GuardPolicy], detectors: Sequence[DetectorSpec] = ()) -> None:
        self.policies = tuple(policies)
        self.detectors = Detectors(detectors)
        self._plans: dict[tuple[object, ...], Plan | None] = {}

    def plan_for(
        self, model: str, hostings: Sequence[str], team: str, key_id: str, key_name: str, role: str
    ) -> Plan | None:
        """The merged rules for a call, or None when no guard applies. Memoized: the same model and
        key always get the same plan (a reload makes a new Guards)."""
        memo = (model, tuple(hostings), team, key_id, key_name, role)
        if memo in self._plans:
            return self._plans[memo]
        applying = [
            policy
            for policy in self.policies
            if (not policy.apply_to.hosting or any(h in policy.apply_to.hosting for h in hostings))
            and _matches(policy.apply_to.models, model)
            and _matches(policy.apply_to.teams, team)
            and _matches(policy.apply_to.keys, key_name, key_id)
            and (not policy.apply_to.apps or (role == "app" and _matches(policy.apply_to.apps, key_name)))
        ]
        plan = None
        if applying:
            plan = Plan(tuple(p.name for p in applying), {}, {}, {})
            for policy in applying:
                for direction, rules in ((plan.input, policy.input), (plan.output, policy.output)):
                    for detector, rule in rules.items():
                        if rule.action != "allow":
                            rules_of = direction.setdefault(detector, [])
                            rules_of.append(ActiveRule(policy.name, detector, rule, policy.on_error))
                for detector, data_class in policy.classify.items():
                    plan.classify[detector] = data_class  # the stricter is taken when applied
        if len(self._plans) > 10_000:
            self._plans.clear()
        self._plans[memo] = plan
        return plan

    async def scan(
        self,
        texts: Sequence[Text],
        rules: dict[str, list[ActiveRule]],
        context: ScanContext,
        review_as: str = "review",
    ) -> Outcome:
        """What the plan's detectors find in `texts`, decided. `review_as` is what review rules do:
        `block` for a stream already under way (it cannot be held any more), `flag` for a call a
        reviewer already approved."""
        if not rules or not texts:
            return Outcome()
        if sum(len(t.text) for t in texts) <= INLINE_CHARS and all(self.detectors.cheap(name) for name in rules):
            return self.scan_sync(list(texts), rules, context, review_as)
        return await asyncio.get_running_loop().run_in_executor(
            _executor, self.scan_sync, list(texts), rules, context, review_as
        )

    def scan_sync(
        self,
        texts: Sequence[Text],
        rules: dict[str, list[ActiveRule]],
        context: ScanContext,
        review_as: str = "review",
    ) -> Outcome:
        outcome = Outcome()
        for detector_name, active in rules.items():
            try:
                detector = self.detectors.get(detector_name)
                # Rules of several guards merge: the cascade runs unless every one says `embeddings: false`.
                if detector_name == "injection" and not any(r.rule.embeddings for r in active):
                    detector = builtin(LEXICAL_INJECTION)
                for index, text in enumerate(texts):
                    if not text.text or (detector_name in _USER_ONLY and text.source not in ("user", "output")):
                        continue
                    indirect = text.source in INDIRECT_SOURCES
                    if detector_name == "injection" and text.source in ("system", "assistant"):
                        continue
                    found = detector.detect(
                        text.text, ScanContext(context.direction, text.source, context.system_prompt)
                    )
                    for finding in found:
                        for rule in active:
                            _decide(outcome, finding, rule, index, indirect, review_as)
            except Exception as exc:
                log.warning("guards: detector %s failed (%s)", detector_name, type(exc).__name__)
                outcome.failures.extend((rule, type(exc).__name__) for rule in active)
        outcome.hits.sort(key=lambda hit: -SEVERITY[hit.action])
        return outcome


def _decide(outcome: Outcome, finding: Finding, active: ActiveRule, index: int, indirect: bool, review_as: str) -> None:
    rule = active.rule
    if finding.score < rule.min_score or (rule.kinds and finding.kind not in rule.kinds):
        return
    action: str = rule.indirect if indirect and active.detector == "injection" else rule.action
    if action == "review":
        action = review_as
    if action != "allow":
        outcome.hits.append(Hit(finding, active, action, index))
