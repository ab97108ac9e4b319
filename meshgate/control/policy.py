"""The one policy layer: who is calling (authentication) and may they do this (authorization).

Keys and teams live in memory (a `KeyStore` reloaded when the control version changes), so a
request costs one SHA-256 and two dict lookups, never a database round trip. Every check of
meshgate goes through `Policy`: the auth middleware for routes, the pipeline steps for models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshgate.control.grants import ROLES, Grant, allowed, matches_any
from meshgate.control.oidc import InvalidToken, OidcVerifier, looks_like_jwt
from meshgate.control.records import KeyRecord, Limits, TeamRecord, hash_key
from meshgate.control.service import ControlService
from meshgate.errors import MeshError

log = logging.getLogger("meshgate.control")

RELOAD_INTERVAL = 1.0  # seconds between polls of the control version: a change is live within ~1 s


class AuthenticationError(MeshError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"
    kind = "unauthenticated"


class PermissionDenied(MeshError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"
    kind = "forbidden"


@dataclass(frozen=True)
class Principal:
    """The caller of one request, as the policy layer sees it."""

    key_id: str
    key_name: str
    team: str
    role: str
    grants: tuple[Grant, ...]
    key_models: tuple[str, ...] = ()
    team_models: tuple[str, ...] = ()
    key_limits: Limits = field(default_factory=Limits)
    team_limits: Limits = field(default_factory=Limits)
    expires_at: float | None = None


#: The caller when authentication is switched off (`--no-auth`, loopback only).
ANONYMOUS = Principal(key_id="anonymous", key_name="anonymous", team="local", role="admin", grants=ROLES["admin"])


def _principal(key: KeyRecord, team: TeamRecord | None) -> Principal:
    return Principal(
        key_id=key.id,
        key_name=key.name,
        team=key.team,
        role=key.role,
        grants=ROLES[key.role],
        key_models=key.models,
        team_models=team.models if team else (),
        key_limits=key.limits,
        team_limits=team.limits if team else Limits(),
        expires_at=key.expires_at,
    )


class KeyStore:
    """Active keys by hash, and teams by name, in memory; reloaded when the control version moves."""

    def __init__(self, service: ControlService) -> None:
        self.service = service
        self.by_hash: dict[str, tuple[str, Principal]] = {}
        self.teams: dict[str, TeamRecord] = {}
        self.version = -1
        self._task: asyncio.Task[None] | None = None

    async def reload(self) -> None:
        version = await self.service.version()
        teams = {t.name: t for t in await self.service.list_teams()}
        keys = await self.service.list_keys()
        self.by_hash = {k.key_hash: (k.key_hash, _principal(k, teams.get(k.team))) for k in keys}
        self.teams = teams
        self.version = version
        log.debug("control: loaded %d keys and %d teams (version %d)", len(keys), len(teams), version)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                if await self.service.version() != self.version:
                    await self.reload()
            except Exception as exc:  # the database may be away; keep serving what we have
                log.warning("control: reload failed (%s); keeping %d keys", type(exc).__name__, len(self.by_hash))

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._watch(), name="keystore-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def bearer_token(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return headers.get("x-api-key") or None


class Policy:
    def __init__(self, keys: KeyStore | None, oidc: OidcVerifier | None = None) -> None:
        """`keys=None` switches authentication off: every caller is ANONYMOUS."""
        self.keys = keys
        self.oidc = oidc

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        if self.keys is None:
            return ANONYMOUS
        token = bearer_token(headers)
        if token is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as `Authorization: Bearer mg-...` or `x-api-key`."
            )
        if self.oidc is not None and looks_like_jwt(token):
            return self._token_principal(token)
        digest = hash_key(token)
        found = self.keys.by_hash.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise _refused()
        principal = found[1]
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise _refused()
        return principal

    def _token_principal(self, token: str) -> Principal:
        assert self.oidc is not None and self.keys is not None
        try:
            subject, team_name, role = self.oidc.verify(token)
        except InvalidToken as exc:
            log.info("oidc: token refused: %s", exc)
            raise AuthenticationError("Incorrect API key provided.") from None
        team = self.keys.teams.get(team_name)
        return Principal(
            key_id=f"oidc:{subject}",
            key_name=subject,
            team=team_name,
            role=role,
            grants=ROLES[role],
            team_models=team.models if team else (),
            team_limits=team.limits if team else Limits(),
        )

    @staticmethod
    def authorize(principal: Principal, object_type: str, name: str, action: str = "use") -> None:
        if not allowed(principal.grants, object_type, name, action):
            raise PermissionDenied(
                f"The {principal.role} key `{principal.key_name}` lacks the grant {object_type}:{name}:{action}."
            )
        if object_type == "model":
            if not matches_any(principal.key_models, name):
                raise PermissionDenied(
                    f"The key `{principal.key_name}` may use only the models {', '.join(principal.key_models)}; "
                    f"it lacks the grant model:{name}:use."
                )
            if not matches_any(principal.team_models, name):
                raise PermissionDenied(
                    f"The team `{principal.team}` may use only the models {', '.join(principal.team_models)}; "
                    f"it lacks the grant model:{name}:use."
                )


def _refused() -> AuthenticationError:
    # One message for unknown, wrong, revoked and expired keys: a caller learns nothing from it.
    return AuthenticationError("Incorrect API key provided.")
