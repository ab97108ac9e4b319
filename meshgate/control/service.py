"""Changes to teams and keys, shared by the CLI and the admin API. Every change bumps the
control version, which running servers poll to reload, and look at before refusing an unknown key
(see KeyStore in policy.py).

New team and key names must match `meshgate.names.NAME_PATTERN`; rows made before that rule keep
working and can still be updated, revoked and rotated."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from meshgate.control.grants import ROLES
from meshgate.control.records import PERIODS, KeyRecord, Limits, TeamRecord, hash_key, new_key, new_key_id
from meshgate.data_classes import data_class_problem
from meshgate.errors import InvalidRequest, MeshError
from meshgate.names import NAME_MAX, name_problem
from meshgate.observe.audit import AuditEvent, AuditLog
from meshgate.store import Database, Queries


class NotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"
    kind = "not_found"


class Conflict(MeshError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"
    kind = "conflict"


@dataclass(frozen=True)
class CreatedKey:
    key: str  # shown once, never stored
    record: KeyRecord


def check_name(kind: str, name: str, param: str) -> None:
    """A 400 `invalid_value` naming the field when `name` is not a valid name."""
    problem = name_problem(kind, name)
    if problem is not None:
        raise InvalidRequest(problem, param=param, code="invalid_value")


def check_limits(limits: Limits) -> None:
    for name in ("rpm", "tpm"):
        value = getattr(limits, name)
        if value is not None and value < 1:
            raise InvalidRequest(f"{name} must be at least 1", param=name)
    if limits.budget_usd is not None and limits.budget_usd < 0:
        raise InvalidRequest("budget must not be negative", param="budget_usd")
    if limits.budget_period is not None and limits.budget_period not in PERIODS:
        raise InvalidRequest(f"budget period must be one of {', '.join(PERIODS)}", param="budget_period")
    if limits.budget_usd is not None and limits.budget_period is None:
        raise InvalidRequest("a budget needs a period (day, week or month)", param="budget_period")


def check_data_class(data_class: str | None) -> None:
    """A 400 `invalid_value` on `data_class` unless it is None (not set) or a data class."""
    if data_class is not None:
        problem = data_class_problem(data_class)
        if problem is not None:
            raise InvalidRequest(problem, param="data_class", code="invalid_value")


def check_models(models: tuple[str, ...]) -> tuple[str, ...]:
    patterns = tuple(m.strip() for m in models if m.strip())
    return () if patterns in ((), ("*",)) else patterns


class ControlService:
    def __init__(self, db: Database, audit: AuditLog | None = None, actor: str = "cli") -> None:
        self.db = db
        self.audit = audit
        self.actor = actor

    def acting_as(self, actor: str) -> ControlService:
        return ControlService(self.db, self.audit, actor)

    async def _audit(self, event: str, subject: str, detail: dict[str, Any]) -> None:
        if self.audit is not None:
            await self.audit.record(AuditEvent(event, self.actor, subject, detail))

    @staticmethod
    async def _bump(tx: Queries) -> None:
        await tx.execute("UPDATE meshgate_state SET value = value + 1 WHERE name = 'control_version'")

    async def version(self) -> int:
        row = await self.db.fetchone("SELECT value FROM meshgate_state WHERE name = 'control_version'")
        return int(row["value"]) if row else 0

    # -- teams ---------------------------------------------------------------------------------

    async def create_team(
        self, name: str, limits: Limits, models: tuple[str, ...] = (), data_class: str | None = None
    ) -> TeamRecord:
        check_name("team name", name, "name")
        check_limits(limits)
        check_data_class(data_class)
        now = time.time()
        async with self.db.transaction() as tx:
            if await tx.fetchone("SELECT name FROM teams WHERE name = ?", (name,)):
                raise Conflict(f"team {name!r} already exists", param="name")
            await tx.execute(
                "INSERT INTO teams (name, rpm, tpm, budget_usd, budget_period, models, data_class, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    limits.rpm,
                    limits.tpm,
                    limits.budget_usd,
                    limits.budget_period,
                    json.dumps(list(check_models(models))),
                    data_class,
                    now,
                    now,
                ),
            )
            await self._bump(tx)
        team = await self.get_team(name)
        await self._audit("team.created", name, team.public())
        return team

    async def update_team(self, name: str, changes: dict[str, Any]) -> TeamRecord:
        """Change the fields in `changes`; a limit given as None is cleared (no limit). Clearing the
        budget clears its period too, unless the period is given as well. `models` None or () means
        all models; `data_class` None clears the team's class (the default applies)."""
        current = await self.get_team(name)
        if "budget_usd" in changes and changes["budget_usd"] is None and "budget_period" not in changes:
            changes = {**changes, "budget_period": None}
        limits = Limits(
            changes.get("rpm", current.limits.rpm),
            changes.get("tpm", current.limits.tpm),
            changes.get("budget_usd", current.limits.budget_usd),
            changes.get("budget_period", current.limits.budget_period),
        )
        check_limits(limits)
        models = check_models(tuple(changes["models"] or ())) if "models" in changes else current.models
        data_class = changes.get("data_class", current.data_class)
        check_data_class(data_class)
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE teams SET rpm = ?, tpm = ?, budget_usd = ?, budget_period = ?, models = ?, data_class = ?, "
                "updated_at = ? WHERE name = ?",
                (
                    limits.rpm,
                    limits.tpm,
                    limits.budget_usd,
                    limits.budget_period,
                    json.dumps(list(models)),
                    data_class,
                    time.time(),
                    name,
                ),
            )
            await self._bump(tx)
        team = await self.get_team(name)
        await self._audit("team.updated", name, {"changes": sorted(changes), **team.public()})
        return team

    async def get_team(self, name: str) -> TeamRecord:
        row = await self.db.fetchone("SELECT * FROM teams WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no team named {name!r}", param="team")
        return TeamRecord.from_row(row)

    async def list_teams(self) -> list[TeamRecord]:
        return [TeamRecord.from_row(r) for r in await self.db.fetchall("SELECT * FROM teams ORDER BY name")]

    # -- keys ----------------------------------------------------------------------------------

    async def create_key(
        self,
        team: str,
        *,
        name: str | None = None,
        role: str = "developer",
        models: tuple[str, ...] = (),
        limits: Limits | None = None,
        expires_at: float | None = None,
        create_team: bool = True,
        data_class: str | None = None,
    ) -> CreatedKey:
        limits = limits or Limits()
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        check_limits(limits)
        check_data_class(data_class)
        if expires_at is not None and expires_at <= time.time():
            raise InvalidRequest("the expiry date is in the past", param="expires_at")
        if name is not None:
            check_name("key name", name, "name")
        if not await self.db.fetchone("SELECT name FROM teams WHERE name = ?", (team,)):
            if not create_team:
                raise NotFound(f"no team named {team!r}", param="team")
            check_name("team name", team, "team")
            await self.create_team(team, Limits())
        key = new_key()
        key_id = new_key_id()
        suffix = "-" + key_id[4:]
        name = name or team[: NAME_MAX - len(suffix)] + suffix
        async with self.db.transaction() as tx:
            if await tx.fetchone("SELECT id FROM api_keys WHERE name = ?", (name,)):
                raise Conflict(f"a key named {name!r} already exists", param="name")
            await tx.execute(
                "INSERT INTO api_keys (id, name, team, role, key_hash, hint, models, rpm, tpm, budget_usd, "
                "budget_period, data_class, expires_at, revoked_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    name,
                    team,
                    role,
                    hash_key(key),
                    key[-4:],
                    json.dumps(list(check_models(models))),
                    limits.rpm,
                    limits.tpm,
                    limits.budget_usd,
                    limits.budget_period,
                    data_class,
                    expires_at,
                    None,
                    time.time(),
                ),
            )
            await self._bump(tx)
        record = await self.get_key(key_id)
        await self._audit("key.created", key_id, _key_detail(record))
        return CreatedKey(key=key, record=record)

    async def get_key(self, id_or_name: str) -> KeyRecord:
        row = await self.db.fetchone("SELECT * FROM api_keys WHERE id = ? OR name = ?", (id_or_name, id_or_name))
        if row is None:
            raise NotFound(f"no key with id or name {id_or_name!r}", param="key")
        return KeyRecord.from_row(row)

    async def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]:
        sql = "SELECT * FROM api_keys" + ("" if include_revoked else " WHERE revoked_at IS NULL")
        return [KeyRecord.from_row(r) for r in await self.db.fetchall(sql + " ORDER BY created_at")]

    async def all_keys(self) -> list[KeyRecord]:
        return await self.list_keys(include_revoked=True)

    async def revoke_key(self, id_or_name: str) -> KeyRecord:
        record = await self.get_key(id_or_name)
        if record.revoked_at is not None:
            return record
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), record.id))
            await self._bump(tx)
        await self._audit("key.revoked", record.id, _key_detail(record))
        return await self.get_key(record.id)

    async def rotate_key(self, id_or_name: str) -> CreatedKey:
        """A new secret for the same key (id, name, team, limits); the old secret stops working."""
        record = await self.get_key(id_or_name)
        if record.revoked_at is not None:
            raise Conflict(f"key {record.name!r} is revoked; create a new one", param="key")
        key = new_key()
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE api_keys SET key_hash = ?, hint = ? WHERE id = ?", (hash_key(key), key[-4:], record.id)
            )
            await self._bump(tx)
        await self._audit("key.rotated", record.id, _key_detail(record))
        return CreatedKey(key=key, record=await self.get_key(record.id))


def _key_detail(key: KeyRecord) -> dict[str, Any]:
    """What the audit log keeps of a key: never its secret or hash."""
    public = key.public()
    fields = (
        "name",
        "team",
        "role",
        "models",
        "rpm",
        "tpm",
        "budget_usd",
        "budget_period",
        "data_class",
        "expires_at",
    )
    return {k: public[k] for k in fields}
