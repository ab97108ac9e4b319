"""Teams and keys as stored, and how a key is made and recognised.

A key is `mg-` followed by 40 random URL-safe characters (240 bits). Only its SHA-256 is stored:
with that much entropy a slow password hash adds nothing but latency on every request, and a
fast hash lets the server keep an O(1) in-memory index by hash. The final comparison is done with
`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "mg-"
PERIODS = ("day", "week", "month")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None


@dataclass(frozen=True)
class TeamRecord:
    name: str
    limits: Limits
    models: tuple[str, ...]
    created_at: float
    data_class: str | None = None  # see meshgate/data_classes.py; None: not set

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TeamRecord:
        return cls(
            name=row["name"],
            limits=Limits(row["rpm"], row["tpm"], row["budget_usd"], row["budget_period"]),
            models=tuple(json.loads(row["models"] or "[]")),
            created_at=row["created_at"],
            data_class=row.get("data_class"),
        )

    def public(self) -> dict[str, Any]:
        """What lists, the admin API and the audit log show of a team."""
        return {
            "name": self.name,
            "models": list(self.models) or ["*"],
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "budget_usd": self.limits.budget_usd,
            "budget_period": self.limits.budget_period,
            "data_class": self.data_class,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    team: str
    role: str
    key_hash: str
    hint: str
    models: tuple[str, ...]
    limits: Limits
    expires_at: float | None
    revoked_at: float | None
    created_at: float
    data_class: str | None = None  # see meshgate/data_classes.py; None: not set

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> KeyRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            team=row["team"],
            role=row["role"],
            key_hash=row["key_hash"],
            hint=row["hint"],
            models=tuple(json.loads(row["models"] or "[]")),
            limits=Limits(row["rpm"], row["tpm"], row["budget_usd"], row["budget_period"]),
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            created_at=row["created_at"],
            data_class=row.get("data_class"),
        )

    def public(self) -> dict[str, Any]:
        """What lists and the admin API show: everything but the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "team": self.team,
            "role": self.role,
            "hint": f"{KEY_PREFIX}…{self.hint}",
            "models": list(self.models) or ["*"],
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "budget_usd": self.limits.budget_usd,
            "budget_period": self.limits.budget_period,
            "data_class": self.data_class,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "created_at": self.created_at,
        }
