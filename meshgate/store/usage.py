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

    def row(self) -> tuple[object, ...]:
        # One C call in column order rather than dataclasses.astuple, which deep-copies each value:
        # this runs once per call on the hot path. Flags are stored as integers.
        values = list(_COLUMN_VALUES(self))
        values[_STREAM], values[_CACHE_HIT] = int(self.stream), int(self.cache_hit)
        return tuple(values)


_COLUMN_VALUES = attrgetter(*USAGE_COLUMNS)
_STREAM, _CACHE_HIT = USAGE_COLUMNS.index("stream"), USAGE_COLUMNS.index("cache_hit")
