"""In which order a route tries its deployments.

- weighted: a random order drawn by weight (A/B splits, canaries): the first is deployment i with
  probability w_i / sum(w); the rest follow, drawn the same way (Efraimidis-Spirakis keys).
- sticky (user or key) on a weighted route: the order is a weighted rendezvous hash of the sticky key,
  so a user keeps its deployment, the split still follows the weights, and adding a deployment only
  moves the users it takes over (about its share), never reshuffles the others.
- ordered: as written.
- least-latency: the lowest moving average of time to first byte first; a deployment with no
  measurement yet goes first, so each is measured.
- least-cost: the lowest price (input + output per million tokens) first; latency breaks ties.
"""

from __future__ import annotations

import hashlib
import math
import operator
import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    name: str
    weight: int

    @property
    def latency(self) -> float | None: ...

    @property
    def unit_price(self) -> float: ...


C = TypeVar("C", bound=Candidate)

_first = operator.itemgetter(0)


def weighted_order(items: Sequence[C], rand: Callable[[], float] = random.random) -> list[C]:
    if len(items) == 2 and items[0].weight > 0 and items[1].weight > 0:
        # The common A/B split, on every call: one draw, the same odds as the keys below
        # (P(u1^(1/a) > u2^(1/b)) = a / (a + b)).
        first, second = items
        return [first, second] if rand() * (first.weight + second.weight) < first.weight else [second, first]
    keyed = []
    for item in items:
        if item.weight <= 0:
            continue
        keyed.append((rand() ** (1.0 / item.weight), item))
    keyed.sort(key=_first, reverse=True)
    return [item for _, item in keyed] + [item for item in items if item.weight <= 0]


def _unit(key: str, name: str) -> float:
    digest = hashlib.blake2b(f"{key}\x00{name}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 2)  # in (0, 1)


def sticky_order(items: Sequence[C], key: str) -> list[C]:
    """Weighted rendezvous hashing: score -w / ln(u(key, deployment)), highest first."""
    scored = [(-item.weight / math.log(_unit(key, item.name)) if item.weight > 0 else -1.0, item) for item in items]
    scored.sort(key=_first, reverse=True)
    return [item for _, item in scored]


def latency_order(items: Sequence[C]) -> list[C]:
    return sorted(items, key=lambda item: -1.0 if item.latency is None else item.latency)


def cost_order(items: Sequence[C]) -> list[C]:
    return sorted(items, key=lambda item: (item.unit_price, item.latency or 0.0))


def order(strategy: str, items: Sequence[C], sticky_key: str | None) -> list[C]:
    if len(items) <= 1:
        return list(items)
    if strategy == "weighted":
        return sticky_order(items, sticky_key) if sticky_key is not None else weighted_order(items)
    if strategy == "least-latency":
        return latency_order(items)
    if strategy == "least-cost":
        return cost_order(items)
    return list(items)
