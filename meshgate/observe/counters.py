"""In-memory counters of outcomes, read by tests and (issue 3) exported at /metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Counters:
    #: (status, error kind) -> count, for every error response, whether or not a model was called.
    errors: Counter[tuple[int, str]] = field(default_factory=Counter)

    def error(self, status: int, kind: str) -> None:
        self.errors[(status, kind)] += 1
