"""The one policy layer: who is calling (authentication) and may they do this (authorization).

Keys and teams live in memory (a `KeyStore` reloaded when the control version changes), so a
request with a known key costs one SHA-256 and two dict lookups, never a database round trip. An
unknown key (perhaps made a moment ago by the CLI in another process) waits for one more check of
the control version before it is refused; those checks are shared and spaced (`CHECK_INTERVAL`),
so a flood of random keys costs a few small queries a second. Every check of meshgate goes through
`Policy`: the auth middleware for routes, the pipeline steps for models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshgate.control.grants import ROLES, Grant, allowed, matches_any
from meshgate.control.oidc import InvalidToken, OidcVerifier, looks_like_jwt
from meshgate.control.records import KEY_PREFIX, KeyRecord, Limits, TeamRecord, hash_key
from meshgate.control.service import ControlService
from meshgate.data_classes import DEFAULT_DATA_CLASS, data_class_problem, stricter
from meshgate.errors import InvalidRequest, MeshError

log = logging.getLogger("meshgate.control")

#: The request header that may raise a call's data class above its key's (never lower it).
DATA_CLASS_HEADER = "x-meshgate-data-class"

#: One message for unknown, wrong, revoked and expired keys and bad tokens: a caller learns nothing from it.
REFUSED = "Incorrect API key provided."

RELOAD_INTERVAL = 1.0  # seconds between polls of the control version: a change is live within ~1 s
CHECK_INTERVAL = 0.05  # at least this long between two checks: unknown keys cost at most 20 queries/s
MISS_WAIT = 5.0  # an unknown key waits at most this long for its check, then is refused
WARN_INTERVAL = 30.0  # at most one warning this often while the control version cannot be read


class AuthenticationError(MeshError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"
    kind = "unauthenticated"


class UnknownKey(AuthenticationError):
    """A key shaped like ours that this server does not hold (yet): `Policy.recheck` looks again.

    Raised by the synchronous `Policy.authenticate` and refused with the same message as any other
    key, so a caller that does not recheck simply refuses it as before.
    """

    def __init__(self, digest: str) -> None:
        super().__init__(REFUSED)
        self.digest = digest


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
    #: The stricter of the key's and the team's data class; None when neither carries one.
    data_class: str | None = None
    #: OIDC groups of a token caller (keys have none): knowledge-bank ACLs may name them.
    groups: tuple[str, ...] = ()


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
        data_class=stricter(key.data_class, team.data_class if team else None),
    )


def call_data_class(principal: Principal | None, header: str | None) -> str:
    """The data class of one call: the stricter of its principal's class (DEFAULT_DATA_CLASS when
    neither key nor team carries one) and the `x-meshgate-data-class` header, which can raise the
    class but never lower it. A header that names no data class is a 400."""
    own = (principal.data_class if principal is not None else None) or DEFAULT_DATA_CLASS
    if header is None:
        return own
    asked = header.strip().lower()  # header values are matched without regard to case or padding
    if data_class_problem(asked) is not None:
        shown = header if len(header) <= 40 else header[:40] + "…"
        raise InvalidRequest(
            f"{DATA_CLASS_HEADER}: {data_class_problem(shown)}", param=DATA_CLASS_HEADER, code="invalid_value"
        )
    return stricter(own, asked) or own


class KeyStore:
    """Active keys by hash, and teams by name, in memory; reloaded when the control version moves.

    One task checks the version: every RELOAD_INTERVAL, and sooner when an unknown key asks for it
    (`refreshed`). Checks never overlap and start at least CHECK_INTERVAL apart; every unknown key
    that arrives before a check starts waits for that same check.
    """

    def __init__(self, service: ControlService) -> None:
        self.service = service
        self.by_hash: dict[str, tuple[str, Principal]] = {}
        self.teams: dict[str, TeamRecord] = {}
        self.version = -1
        self._task: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()  # reloads by the checker and by the admin API never interleave
        self._wanted: asyncio.Future[bool] | None = None  # the next check, as soon as it may start
        self._wake = asyncio.Event()
        self._last_check = -math.inf  # loop time at which the last check started
        self._failures = 0
        self._warned_at = -math.inf

    def principal_by_id(self, key_id: str) -> Principal | None:
        """An active key's principal by key id (rare: a review queue releasing a held call)."""
        return next((p for _, p in self.by_hash.values() if p.key_id == key_id), None)

    async def reload(self) -> None:
        async with self._reloading:
            version = await self.service.version()
            teams = {t.name: t for t in await self.service.list_teams()}
            keys = await self.service.list_keys()
            self.by_hash = {k.key_hash: (k.key_hash, _principal(k, teams.get(k.team))) for k in keys}
            self.teams = teams
            self.version = version
        log.debug("control: loaded %d keys and %d teams (version %d)", len(keys), len(teams), version)

    async def refreshed(self) -> bool:
        """Wait for a check of the control version that starts after this call (and the reload it
        triggers). False when it failed, took longer than MISS_WAIT, or the store is stopped."""
        if self._task is None or self._task.done():
            return False
        if self._wanted is None:
            self._wanted = asyncio.get_running_loop().create_future()
            self._wake.set()
        try:
            async with asyncio.timeout(MISS_WAIT):
                # shielded: a caller that goes away must not cancel the check the others wait for
                return await asyncio.shield(self._wanted)
        except TimeoutError:
            self._warn(f"no answer within {MISS_WAIT:g} s")
            return False

    async def _check(self) -> bool:
        try:
            if await self.service.version() != self.version:
                await self.reload()
        except Exception as exc:  # the database may be away; keep serving what we have
            self._warn(type(exc).__name__)
            return False
        if self._failures:
            log.warning("control: the control version is readable again")
            self._failures, self._warned_at = 0, -math.inf
        return True

    def _warn(self, reason: str) -> None:
        self._failures += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            log.warning(
                "control: cannot check the control version (%s, %d time(s)); keeping %d keys and refusing "
                "keys not among them",
                reason,
                self._failures,
                len(self.by_hash),
            )

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            poll_in = self._last_check + RELOAD_INTERVAL - loop.time()
            if self._wanted is None and poll_in > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_in):
                        await self._wake.wait()
            spacing = self._last_check + CHECK_INTERVAL - loop.time()
            if spacing > 0:
                await asyncio.sleep(spacing)
            # From here on, an unknown key waits for the check after this one: this check may read
            # the version before that key's row was committed.
            self._wake.clear()
            waiting, self._wanted = self._wanted, None
            self._last_check = loop.time()
            ok = await self._check()
            if waiting is not None and not waiting.done():
                waiting.set_result(ok)

    async def start(self) -> None:
        await self.reload()
        self._last_check = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._watch(), name="keystore-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._wanted is not None and not self._wanted.done():
            self._wanted.set_result(False)
        self._wanted = None


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
            # Perhaps created a moment ago (by the CLI, or on another replica): the caller may
            # `recheck`. A token that cannot be one of our keys is refused at once.
            raise UnknownKey(digest) if token.startswith(KEY_PREFIX) else _refused()
        principal = found[1]
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise _refused()
        return principal

    async def recheck(self, miss: UnknownKey) -> Principal:
        """The principal of a key `authenticate` did not know, after one more (shared, rate-limited)
        check of the control version; refused like any bad key if it is still unknown."""
        keys = self.keys
        if keys is not None and await keys.refreshed():
            found = keys.by_hash.get(miss.digest)
            if found is not None and hmac.compare_digest(found[0], miss.digest):
                principal = found[1]
                if principal.expires_at is None or principal.expires_at > time.time():
                    return principal
        raise _refused()

    def _token_principal(self, token: str) -> Principal:
        assert self.oidc is not None and self.keys is not None
        try:
            subject, team_name, role, groups = self.oidc.verify(token)
        except InvalidToken as exc:
            log.info("oidc: token refused: %s", exc)
            raise AuthenticationError(REFUSED) from None
        team = self.keys.teams.get(team_name)
        return Principal(
            key_id=f"oidc:{subject}",
            key_name=subject,
            team=team_name,
            role=role,
            grants=ROLES[role],
            team_models=team.models if team else (),
            team_limits=team.limits if team else Limits(),
            data_class=team.data_class if team else None,
            groups=groups,
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
    return AuthenticationError(REFUSED)
