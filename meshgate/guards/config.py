"""The `detectors:` and `guards:` blocks of mesh.yaml.

```yaml
detectors:
  - {name: codenames, kind: regex, pattern: "Project (Heron|Falcon)"}
guards:
  - name: cloud-egress
    apply_to: {hosting: [cloud]}        # or models, teams, keys, apps
    input:  {pii: redact, secrets: block, injection: block, moderation: flag}
    output: {pii: redact, secrets: block, moderation: block, leakage: block, codenames: review}
    on_error: block                     # fail closed
```

An action is written short (`pii: redact`) or long, with options:
`pii: {action: redact, entities: [email, phone], min_score: 0.6}`,
`injection: {action: block, indirect: flag}` (what injection found in tool results and retrieved
documents does; `flag` unless said; `embeddings: false` runs its lexical model alone),
`moderation: {action: block, categories: [hate, violence]}`,
`anything: {action: flag, sample: 0.1}` (a tenth of the flagged calls go to the review queue).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshgate.data_classes import DATA_CLASSES, HOSTINGS
from meshgate.names import name_problem

Action = Literal["allow", "flag", "redact", "block", "review"]
#: From the least to the most severe: when several guards act on one finding, the severest wins.
SEVERITY: dict[str, int] = {"allow": 0, "flag": 1, "redact": 2, "review": 3, "block": 4}

#: Detectors every mesh has, by the name policies use.
BUILTIN_DETECTORS: tuple[str, ...] = ("pii", "secrets", "injection", "moderation", "leakage")
#: Detectors that judge a whole text rather than find spans in it: their findings cannot be redacted.
WHOLE_TEXT_DETECTORS: frozenset[str] = frozenset({"injection", "moderation"})
#: Detectors that only make sense on answers (they compare an answer with the request).
OUTPUT_ONLY_DETECTORS: frozenset[str] = frozenset({"leakage"})

#: Kinds of detectors mesh.yaml can define (`detectors: [{name, kind, ...}]`).
CUSTOM_KINDS: tuple[str, ...] = (
    "regex",
    "words",
    "deny",
    "competitors",
    "allow_domains",
    "json_schema",
    "pii",
    "moderation",
)


NAME_KIND = "name"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """What a guard does with one detector's findings."""

    action: Action = Field(description="allow, flag, redact, block or review.")
    entities: tuple[str, ...] = Field((), description="Only these finding kinds count (PII entities); empty: all.")
    categories: tuple[str, ...] = Field((), description="Only these moderation categories count; empty: all.")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Findings scored below this do not count.")
    indirect: Action = Field(
        "flag", description="For injection: the action on text from tool results and retrieved documents."
    )
    embeddings: bool = Field(
        True,
        description="For injection: texts the lexical model is unsure of go on to a MiniLM model (false: "
        "the lexical model alone, faster, fewer attacks caught).",
    )
    sample: float = Field(
        0.0, ge=0.0, le=1.0, description="The share of flagged calls queued for after-the-fact review."
    )

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self.entities) | frozenset(self.categories)


def _rules(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {name: {"action": rule} if isinstance(rule, str) else rule for name, rule in value.items()}


class ApplyTo(_Strict):
    """Which calls a guard applies to; every list given must match (empty: every call). Names are
    shell-style patterns (`gpt-*`)."""

    hosting: tuple[Literal["local", "private", "cloud"], ...] = Field(
        (), description="Hostings of the model called (a route: any of its deployments')."
    )
    models: tuple[str, ...] = Field((), description="Model names (patterns).")
    teams: tuple[str, ...] = Field((), description="Team names (patterns).")
    keys: tuple[str, ...] = Field((), description="Key names or ids (patterns).")
    apps: tuple[str, ...] = Field((), description="Application keys (role `app`) by name (patterns).")


class GuardPolicy(_Strict):
    name: str = Field(description="The guard's name, in errors, audit and metrics.")
    apply_to: ApplyTo = Field(ApplyTo(), description="Which calls it applies to (empty: every call).")
    input: dict[str, Rule] = Field(
        default_factory=dict, description="Detector name -> action (or a rule) on the request's texts."
    )
    output: dict[str, Rule] = Field(default_factory=dict, description="Detector name -> action on the answer.")
    on_error: Literal["block", "allow"] = Field(
        "block",
        description="A detector that fails blocks the call (fail closed) or lets it through, logged and counted.",
    )
    classify: dict[str, Literal["public", "internal", "confidential", "restricted"]] = Field(
        default_factory=dict,
        description="Detector name -> the data class its findings raise the call to (routing follows).",
    )

    _normalize_input = field_validator("input", "output", mode="before")(_rules)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if problem := name_problem(NAME_KIND, value):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _actions_fit(self) -> GuardPolicy:
        for direction, rules in (("input", self.input), ("output", self.output)):
            for detector, rule in rules.items():
                if rule.action == "redact" and detector in WHOLE_TEXT_DETECTORS:
                    raise ValueError(
                        f"{direction}.{detector}: `redact` needs spans; {detector} judges the whole text "
                        "(use flag, block or review)"
                    )
                if not rule.embeddings and detector != "injection":
                    raise ValueError(f"{direction}.{detector}: `embeddings` is an option of injection only")
                if direction == "input" and detector in OUTPUT_ONLY_DETECTORS:
                    raise ValueError(f"input.{detector}: {detector} checks answers only (put it under output)")
        return self


class DetectorSpec(BaseModel):
    """A detector defined in mesh.yaml; its other fields depend on its kind and are checked when it
    is built (guards/registry.py)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    kind: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if problem := name_problem(NAME_KIND, value):
            raise ValueError(problem)
        if value in BUILTIN_DETECTORS:
            raise ValueError(f"`{value}` is a built-in detector's name; pick another")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in CUSTOM_KINDS:
            raise ValueError(f"unknown detector kind `{value}` (one of: {', '.join(CUSTOM_KINDS)})")
        return value

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def check_references(guards: list[GuardPolicy], detectors: list[DetectorSpec]) -> list[str]:
    """Problems with names: policies that use detectors nobody defined, detectors defined twice,
    guards named twice."""
    problems: list[str] = []
    known = set(BUILTIN_DETECTORS)
    for index, spec in enumerate(detectors):
        if spec.name in known:
            problems.append(f"detectors[{index}].name: `{spec.name}` is defined twice")
        known.add(spec.name)
    seen: set[str] = set()
    for index, guard in enumerate(guards):
        if guard.name in seen:
            problems.append(f"guards[{index}].name: `{guard.name}` is defined twice")
        seen.add(guard.name)
        for direction, rules in (("input", guard.input), ("output", guard.output)):
            for detector in rules:
                if detector not in known:
                    problems.append(
                        f"guards[{index}].{direction}.{detector}: no such detector "
                        f"(built in: {', '.join(BUILTIN_DETECTORS)}; or define it under `detectors:`)"
                    )
        for detector in guard.classify:
            if detector not in known:
                problems.append(f"guards[{index}].classify.{detector}: no such detector")
    return problems


assert set(HOSTINGS) == {"local", "private", "cloud"} and len(DATA_CLASSES) == 4  # the Literals above
