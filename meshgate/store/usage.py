"""Usage records: one per model call, the basis of cost, budgets and reports."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

USAGE_COLUMNS = (
    "id",
    "ts",
    "endpoint",
    "key_id",
    "team",
    "user_name",
    "model",
    "served_model",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "stream",
    "cache_hit",
    "error_kind",
    "refused",
    "deployment",
    "attempts",
    "failovers",
    "cache",
    "cost_saved_usd",
    "guards",
)

INSERT_USAGE = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' for _ in USAGE_COLUMNS)}) "
    "ON CONFLICT (id) DO NOTHING"
)


@dataclass(frozen=True)
class UsageRecord:
    id: str
    ts: float
    endpoint: str
    key_id: str | None
    team: str | None
    user_name: str | None
    model: str
    served_model: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    stream: bool
    cache_hit: bool
    error_kind: str | None
    #: Refused before it went upstream (authorization, capabilities, rate limit, budget): costs $0,
    #: and budgets rebuilt from usage leave it out.
    refused: bool = False
    #: The deployment of the route that served the call (the model's own name for a flat entry).
    deployment: str | None = None
    #: Deployments tried, the serving one included.
    attempts: int = 1
    #: JSON list of {"deployment", "reason"} for each deployment that failed over, or None.
    failovers: str | None = None
    #: How the cache answered: "hit" | "semantic-hit" | "miss" | "bypass", or None (cache off).
    cache: str | None = None
    #: What a cache hit saved: the upstream cost of the answer it replayed.
    cost_saved_usd: float = 0.0
    #: What guards found and did: JSON {"guards": [...], "findings": {"input.pii.email.redact": 2}}
    #: (kinds, actions and counts, never values), or None when no guard applied.
    guards: str | None = None

    def row(self) -> tuple[object, ...]:
        # One C call in column order rather than dataclasses.astuple, which deep-copies each value:
        # this runs once per call on the hot path. Flags are stored as integers.
        values = list(_COLUMN_VALUES(self))
        values[_STREAM], values[_CACHE_HIT], values[_REFUSED] = int(self.stream), int(self.cache_hit), int(self.refused)
        return tuple(values)


_COLUMN_VALUES = attrgetter(*USAGE_COLUMNS)
_STREAM, _CACHE_HIT, _REFUSED = (USAGE_COLUMNS.index(c) for c in ("stream", "cache_hit", "refused"))
