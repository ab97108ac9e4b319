"""The mesh.yaml form of a route: a model name over deployments.

```yaml
models:
  - name: chat
    routing: weighted                  # weighted (default) | ordered | least-latency | least-cost
    deployments:
      - {name: primary, provider: openai-compatible, model: m1, base_url: ..., weight: 80, hosting: cloud}
      - {name: second, provider: anthropic, model: claude-x, api_key: ..., weight: 20, hosting: private}
    fallbacks: [local-chat]
    sticky: user                       # user | key
    cache: {mode: semantic, threshold: 0.95}
    breaker: {failures: 3, cooldown: 10s}
```

Each deployment is an ordinary provider entry (validated by its provider type) plus `weight`. A flat
entry (`provider:` at the top) is one deployment named like the model; it becomes a route only when
it uses a route field (`fallbacks`, `sticky`, `cache`, ...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator

from meshgate.cache.config import parse_duration
from meshgate.providers.base import ModelConfig

#: Fields of a model entry that belong to the route, not to a provider.
ROUTE_FIELDS = ("routing", "deployments", "fallbacks", "sticky", "cache", "breaker", "max_attempts", "deadline")

#: What the route does not take from a flat entry: the provider fields stay with its deployment.
SHARED_FIELDS = ("name", "description", "card", "price", "rpm", "tpm")

Strategy = Literal["weighted", "ordered", "least-latency", "least-cost"]


class BreakerConfig(BaseModel):
    """A deployment's circuit breaker: open after `failures` failures in a row, for `cooldown`
    seconds; then one probe call (half-open) closes it on success or opens it again."""

    model_config = ConfigDict(extra="forbid")
    failures: int = Field(3, ge=1, description="Failures in a row (connect errors, timeouts, 429, 5xx) that open it.")
    cooldown: float = Field(10.0, description="How long it stays open (`10s`, `1m`, or seconds); then one probe.")

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, value: Any) -> float:
        return parse_duration(value)


class RouteConfig(ModelConfig):
    """A model served by one or more deployments."""

    provider: str = "route"
    routing: Strategy = Field(
        "weighted",
        description="weighted, ordered, least-latency or least-cost: the order deployments are tried in.",
    )
    deployments: list[SerializeAsAny[ModelConfig]] = Field(
        min_length=1,
        description="Provider entries (each with a unique `name`) plus `weight` (default 1; 0 = failover only).",
    )
    #: One weight per deployment, in order (the entries' `weight`, default 1).
    weights: list[int] = Field(default_factory=list, exclude=True)
    fallbacks: list[str] = Field(
        default_factory=list, description="Other model names tried in order when every deployment failed."
    )
    sticky: Literal["user", "key"] | None = Field(
        None, description="`user` or `key`: the same user (or key) keeps its deployment (weighted routing)."
    )
    #: The per-model cache block, as written (validated and merged over the default by the loader).
    cache: dict[str, Any] | None = Field(None, description="This model's cache settings over the top-level `cache:`.")
    breaker: BreakerConfig = Field(BreakerConfig(), description="Each deployment's circuit breaker (below).")
    #: Deployments and fallbacks tried at most, in all (default: each candidate once).
    max_attempts: int | None = Field(
        None, ge=1, description="Deployments and fallbacks tried at most (default: each once)."
    )
    #: Seconds all attempts together may take (default: the `request_timeout` setting).
    deadline: float | None = Field(None, description="All attempts together (`60s`; default: `request_timeout`).")

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)
