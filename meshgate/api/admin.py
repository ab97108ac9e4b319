"""The admin API under /admin/: teams and keys. The grants it needs are enforced by the auth
middleware (`admin:<resource>:read|write`); this module only parses and calls the service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.api.bodies import decode_request
from meshgate.api.calls import runtime_of
from meshgate.api.responses import JSONBytesResponse
from meshgate.control.records import Limits
from meshgate.control.service import ControlService
from meshgate.errors import InvalidRequest
from meshgate.observe.usage_report import parse_since, usage_report

if TYPE_CHECKING:
    pass

Count = Annotated[int, Meta(ge=1)]
Money = Annotated[float, Meta(ge=0)]


class TeamCreate(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    rpm: Count | None = None
    tpm: Count | None = None
    budget_usd: Money | None = None
    budget_period: str | None = None
    models: list[str] = []
    data_class: str | None = None  # public, internal, confidential or restricted; checked by the service


class TeamUpdate(Struct, forbid_unknown_fields=True):
    """A field left out stays as it is; a field given as null is cleared (no limit, all models)."""

    rpm: Count | UnsetType | None = UNSET
    tpm: Count | UnsetType | None = UNSET
    budget_usd: Money | UnsetType | None = UNSET
    budget_period: str | UnsetType | None = UNSET
    models: list[str] | UnsetType | None = UNSET
    data_class: str | UnsetType | None = UNSET


class KeyCreate(Struct, forbid_unknown_fields=True):
    team: Annotated[str, Meta(min_length=1, max_length=200)]
    name: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    role: str = "developer"
    models: list[str] = []
    rpm: Count | None = None
    tpm: Count | None = None
    budget_usd: Money | None = None
    budget_period: str | None = None
    expires_at: float | None = None
    data_class: str | None = None


def _service(request: Request) -> ControlService:
    """The control service, acting as the calling key (for the audit log)."""
    service = runtime_of(request).control
    assert service is not None
    principal = getattr(request.state, "principal", None)
    return service.acting_as(principal.key_id if principal is not None else "anonymous")


async def _changed(request: Request) -> None:
    """This server sees its own change at once; other replicas see a new key on its first use and
    other changes within a second."""
    keys = runtime_of(request).keys
    if keys is not None:
        await keys.reload()


def _limit(request: Request) -> int:
    return runtime_of(request).settings.max_body_bytes


async def list_teams(request: Request) -> Response:
    return JSONBytesResponse({"object": "list", "data": [t.public() for t in await _service(request).list_teams()]})


async def create_team(request: Request) -> Response:
    body = await decode_request(request, TeamCreate, _limit(request))
    team = await _service(request).create_team(
        body.name,
        Limits(body.rpm, body.tpm, body.budget_usd, body.budget_period),
        tuple(body.models),
        data_class=body.data_class,
    )
    await _changed(request)
    return JSONBytesResponse(team.public(), status_code=201)


async def update_team(request: Request) -> Response:
    """PATCH: the fields given change, null clearing a limit (or the model list); the others stay."""
    body = await decode_request(request, TeamUpdate, _limit(request))
    changes = {f: getattr(body, f) for f in body.__struct_fields__ if getattr(body, f) is not UNSET}
    team = await _service(request).update_team(request.path_params["name"], changes)
    await _changed(request)
    return JSONBytesResponse(team.public())


async def list_keys(request: Request) -> Response:
    include = request.query_params.get("include_revoked") in ("1", "true")
    keys = await _service(request).list_keys(include_revoked=include)
    return JSONBytesResponse({"object": "list", "data": [k.public() for k in keys]})


async def get_key(request: Request) -> Response:
    return JSONBytesResponse((await _service(request).get_key(request.path_params["key"])).public())


async def create_key(request: Request) -> Response:
    body = await decode_request(request, KeyCreate, _limit(request))
    created = await _service(request).create_key(
        body.team,
        name=body.name,
        role=body.role,
        models=tuple(body.models),
        limits=Limits(body.rpm, body.tpm, body.budget_usd, body.budget_period),
        expires_at=body.expires_at,
        data_class=body.data_class,
    )
    await _changed(request)
    return JSONBytesResponse({"key": created.key, **created.record.public()}, status_code=201)


async def revoke_key(request: Request) -> Response:
    record = await _service(request).revoke_key(request.path_params["key"])
    await _changed(request)
    return JSONBytesResponse(record.public())


async def rotate_key(request: Request) -> Response:
    created = await _service(request).rotate_key(request.path_params["key"])
    await _changed(request)
    return JSONBytesResponse({"key": created.key, **created.record.public()})


async def usage(request: Request) -> Response:
    """GET /admin/usage?by=team|key|model|day&since=7d"""
    runtime = runtime_of(request)
    assert runtime.db is not None and runtime.usage is not None
    try:
        since = parse_since(request.query_params.get("since"))
        by = request.query_params.get("by", "team")
        await runtime.usage.flush()  # include this server's latest calls
        rows = await usage_report(runtime.db, by, since)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=str(exc).split(":")[0]) from None
    return JSONBytesResponse({"object": "list", "by": by, "since": since, "data": rows})


ROUTES = [
    Route("/admin/usage", usage, methods=["GET"]),
    Route("/admin/teams", list_teams, methods=["GET"]),
    Route("/admin/teams", create_team, methods=["POST"]),
    Route("/admin/teams/{name}", update_team, methods=["PATCH"]),
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys/{key}", get_key, methods=["GET"]),
    Route("/admin/keys/{key}/revoke", revoke_key, methods=["POST"]),
    Route("/admin/keys/{key}/rotate", rotate_key, methods=["POST"]),
]
