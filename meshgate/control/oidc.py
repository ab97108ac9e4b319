"""OIDC / JWT bearer tokens as an alternative to meshgate keys.

A token's signature is checked against a JWKS (a file, or a URL fetched at startup and refreshed
in the background, never on the request path); its issuer, audience and expiry are checked; one
claim names the team and another the roles. The caller then passes the same policy layer as a key
holder: grants of its role, the team's models and limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from meshgate.control.grants import ROLES
from meshgate.errors import ConfigError

log = logging.getLogger("meshgate.control")

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
ROLE_RANK = ("admin", "developer", "app", "reviewer")  # the strongest role a token carries wins
REFRESH_SECONDS = 300


class InvalidToken(Exception):
    """The reason a token was refused; logged, never shown to the caller."""


class OidcVerifier:
    def __init__(
        self,
        jwks: str,
        issuer: str,
        audience: str,
        team_claim: str = "team",
        roles_claim: str = "roles",
        groups_claim: str = "groups",
    ) -> None:
        if not (issuer and audience):
            raise ConfigError("oidc: oidc_issuer and oidc_audience are required with oidc_jwks")
        self.source, self.issuer, self.audience = jwks, issuer, audience
        self.team_claim, self.roles_claim, self.groups_claim = team_claim, roles_claim, groups_claim
        self._keys: dict[str | None, Any] = {}
        self._task: asyncio.Task[None] | None = None

    def _load(self, document: Mapping[str, Any]) -> None:
        try:
            keys = jwt.PyJWKSet.from_dict(dict(document)).keys
        except jwt.PyJWTError as exc:
            raise ConfigError(f"oidc_jwks: {self.source} holds no usable keys ({exc})") from None
        self._keys = {key.key_id: key for key in keys}

    async def _fetch(self) -> dict[str, Any]:
        if self.source.startswith(("http://", "https://")):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.get(self.source) as response,
            ):
                response.raise_for_status()
                document: dict[str, Any] = await response.json(content_type=None)
                return document
        text = await asyncio.to_thread(_read_text, self.source)
        loaded: dict[str, Any] = json.loads(text)
        return loaded

    async def start(self) -> None:
        try:
            self._load(await self._fetch())
        except (OSError, aiohttp.ClientError, json.JSONDecodeError) as exc:
            raise ConfigError(f"oidc_jwks: cannot read {self.source}: {exc}") from None
        self._task = asyncio.create_task(self._refresh(), name="oidc-jwks-refresh")

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                self._load(await self._fetch())
            except Exception as exc:  # keep the keys we have
                log.warning("oidc: refreshing the JWKS from %s failed (%s)", self.source, exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def verify(self, token: str) -> tuple[str, str, str, tuple[str, ...]]:
        """(subject, team, role, groups) of a valid token, or InvalidToken. Groups (a list or one
        string in the groups claim) decide which knowledge-bank documents the caller may read."""
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            # A token without a kid may use the only key there is; a named kid must exist.
            key = (
                self._keys.get(kid)
                if kid is not None
                else (next(iter(self._keys.values()), None) if len(self._keys) == 1 else None)
            )
            if key is None:
                raise InvalidToken(f"no key with kid {kid!r}")
            claims = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        team = claims.get(self.team_claim)
        roles = claims.get(self.roles_claim)
        roles = [roles] if isinstance(roles, str) else list(roles or [])
        role = next((r for r in ROLE_RANK if r in roles), None)
        if not isinstance(team, str) or not team:
            raise InvalidToken(f"no {self.team_claim!r} claim")
        if role is None:
            raise InvalidToken(f"no meshgate role in {self.roles_claim!r} (one of {', '.join(ROLES)})")
        raw = claims.get(self.groups_claim)
        groups = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        return str(claims["sub"]), team, role, tuple(g for g in groups if isinstance(g, str) and g)


def _read_text(path: str) -> str:
    return Path(path).expanduser().read_text()


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("mg-")
