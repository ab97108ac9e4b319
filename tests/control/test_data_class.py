"""Data classes of keys and teams: set by the CLI and the admin API, refused when not a class, kept
across reloads, combined into the principal's class, and raised (never lowered) by a request header."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.control.policy import ANONYMOUS, DATA_CLASS_HEADER, Principal, call_data_class
from meshgate.control.records import Limits, hash_key
from meshgate.data_classes import DATA_CLASSES, DEFAULT_DATA_CLASS
from meshgate.errors import InvalidRequest
from meshgate.observe.audit import export
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime, upstream_models_yaml
from tests.control.test_auth import mesh  # noqa: F401 - the module fixture (SQLite and PostgreSQL)
from tests.control.test_oidc import bearer, oidc_mesh, token  # noqa: F401 - the module fixture
from tests.store.test_database_contract import _drop_schema as drop_schema
from tests.store.test_database_contract import _pg_url as pg_url
from tests.test_api_errors import assert_openai_error

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def principal_of(client: AppClient, key: str) -> Principal:
    assert client.runtime.keys is not None
    return client.runtime.keys.by_hash[hash_key(key)][1]


# -- CLI ------------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The CLI's store options: a data dir, plus a PostgreSQL schema of its own on that backend."""
    args = ["--data-dir", str(tmp_path / "data")]
    if request.param == "sqlite":
        yield args
        return
    url, schema = asyncio.run(pg_url())
    try:
        yield [*args, "--database-url", url]
    finally:
        asyncio.run(drop_schema(schema))


def cli_run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def listed(kind: str, store: list[str]) -> list[dict[str, object]]:
    code, out = cli_run(kind, "list", "--format", "json", *store)
    assert code == 0, out
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def test_cli_sets_shows_and_clears_data_classes(store_args: list[str]) -> None:
    code, out = cli_run("teams", "create", "legal", "--data-class", "confidential", *store_args)
    assert code == 0, out
    assert cli_run("teams", "create", "plain", *store_args)[0] == 0
    code, out = cli_run(
        "keys", "create", "--team", "legal", "--name", "contracts", "--data-class", "Restricted", *store_args
    )
    assert code == 0, out
    assert cli_run("keys", "create", "--team", "legal", "--name", "unset", *store_args)[0] == 0

    teams = {t["name"]: t["data_class"] for t in listed("teams", store_args)}
    assert teams == {"legal": "confidential", "plain": None}
    keys = {k["name"]: k["data_class"] for k in listed("keys", store_args)}
    assert keys == {"contracts": "restricted", "unset": None}  # the choice is matched without regard to case

    code, table = cli_run("keys", "list", *store_args)
    header, *rows = table.splitlines()
    assert "DATA_CLASS" in header.split()
    column = header.split().index("DATA_CLASS")
    assert {row.split()[1]: row.split()[column] for row in rows} == {"contracts": "restricted", "unset": "-"}
    code, table = cli_run("teams", "list", *store_args)
    assert "DATA_CLASS" in table.splitlines()[0] and "confidential" in table

    # update: only what is given changes; `none` clears the class.
    code, out = cli_run("teams", "update", "plain", "--data-class", "public", "--rpm", "10", *store_args)
    assert code == 0 and "public" in out, out
    code, out = cli_run("teams", "update", "legal", "--rpm", "5", *store_args)
    assert code == 0, out
    teams = {t["name"]: (t["data_class"], t["rpm"]) for t in listed("teams", store_args)}
    assert teams == {"legal": ("confidential", 5), "plain": ("public", 10)}
    code, out = cli_run("teams", "update", "legal", "--data-class", "NONE", *store_args)
    assert code == 0, out
    assert {t["name"]: t["data_class"] for t in listed("teams", store_args)} == {"legal": None, "plain": "public"}


def test_cli_refuses_what_is_not_a_data_class_and_stores_nothing(store_args: list[str]) -> None:
    code, out = cli_run("teams", "create", "ops", "--data-class", "secret", *store_args)
    assert code == 2 and "--data-class" in out and "'secret'" in out and "restricted" in out
    code, out = cli_run("keys", "create", "--team", "newteam", "--data-class", "top", *store_args)
    assert code == 2 and "--data-class" in out
    assert listed("teams", store_args) == [] and listed("keys", store_args) == []

    assert cli_run("teams", "create", "ops", "--data-class", "internal", *store_args)[0] == 0
    code, out = cli_run("teams", "update", "ops", "--data-class", "hush", *store_args)
    assert code == 2 and "none to clear it" in out and "confidential" in out
    assert [t["data_class"] for t in listed("teams", store_args)] == ["internal"]


def test_cli_help_names_the_classes() -> None:
    for command in (["keys", "create"], ["teams", "create"], ["teams", "update"]):
        code, out = cli_run(*command, "--help")
        assert code == 0 and "--data-class" in out
        assert "public|internal|confidential|restricted" in out


# -- admin API ------------------------------------------------------------------------------------


async def test_admin_api_sets_returns_and_clears_data_classes(mesh: AppClient) -> None:  # noqa: F811
    created = await mesh.http.post("/admin/teams", json={"name": "dc-team", "data_class": "confidential"})
    assert created.status_code == 201, created.text
    assert created.json()["data_class"] == "confidential"
    plain = await mesh.http.post("/admin/teams", json={"name": "dc-plain"})
    assert plain.status_code == 201 and plain.json()["data_class"] is None

    key = await mesh.http.post("/admin/keys", json={"team": "dc-team", "name": "dc-key", "data_class": "restricted"})
    assert key.status_code == 201, key.text
    assert key.json()["data_class"] == "restricted"
    assert (await mesh.http.get("/admin/keys/dc-key")).json()["data_class"] == "restricted"
    listed_keys = (await mesh.http.get("/admin/keys")).json()["data"]
    assert next(k for k in listed_keys if k["name"] == "dc-key")["data_class"] == "restricted"

    # PATCH: omitted stays, a value changes it, null clears it.
    team = (await mesh.http.patch("/admin/teams/dc-team", json={"rpm": 7})).json()
    assert team["data_class"] == "confidential" and team["rpm"] == 7
    team = (await mesh.http.patch("/admin/teams/dc-team", json={"data_class": "public"})).json()
    assert team["data_class"] == "public" and team["rpm"] == 7
    team = (await mesh.http.patch("/admin/teams/dc-team", json={"data_class": None})).json()
    assert team["data_class"] is None and team["rpm"] == 7
    listed_teams = (await mesh.http.get("/admin/teams")).json()["data"]
    assert next(t for t in listed_teams if t["name"] == "dc-team")["data_class"] is None

    # Every change is in the audit log, with the class.
    assert mesh.runtime.db is not None
    events = [
        (e["event"], e["detail"].get("data_class"))
        async for e in export(mesh.runtime.db)
        if e["subject"] in ("dc-team", key.json()["id"])
    ]
    assert events == [
        ("team.created", "confidential"),
        ("key.created", "restricted"),
        ("team.updated", "confidential"),
        ("team.updated", "public"),
        ("team.updated", None),
    ]


async def test_admin_api_refuses_what_is_not_a_data_class_and_stores_nothing(mesh: AppClient) -> None:  # noqa: F811
    for bad in ("secret", "PUBLIC", "", 3):
        error = assert_openai_error(
            await mesh.http.post("/admin/teams", json={"name": "dc-bad", "data_class": bad}),
            400,
            param="data_class",
        )
        if isinstance(bad, str):
            assert repr(bad) in error["message"] and ", ".join(DATA_CLASSES) in error["message"]
        error = assert_openai_error(
            await mesh.http.post("/admin/keys", json={"team": "dc-bad-keys", "data_class": bad}),
            400,
            param="data_class",
        )
    teams = (await mesh.http.get("/admin/teams")).json()["data"]
    assert not {"dc-bad", "dc-bad-keys"} & {t["name"] for t in teams}  # not even the key's team
    keys = (await mesh.http.get("/admin/keys")).json()["data"]
    assert "dc-bad-keys" not in {k["team"] for k in keys}

    assert (await mesh.http.post("/admin/teams", json={"name": "dc-kept", "data_class": "internal"})).status_code == 201
    bad = await mesh.http.patch("/admin/teams/dc-kept", json={"data_class": "secret", "rpm": 3})
    error = assert_openai_error(bad, 400, param="data_class", code="invalid_value")
    assert "'secret' is not a data class" in error["message"]
    team = next(t for t in (await mesh.http.get("/admin/teams")).json()["data"] if t["name"] == "dc-kept")
    assert team["data_class"] == "internal" and team["rpm"] is None


# -- the principal --------------------------------------------------------------------------------


async def test_a_principals_class_is_the_stricter_of_key_and_team(mesh: AppClient) -> None:  # noqa: F811
    control, keys = mesh.runtime.control, mesh.runtime.keys
    assert control is not None and keys is not None
    await control.create_team("dc-conf", Limits(), data_class="confidential")
    await control.create_team("dc-none", Limits())
    made = {
        (team, own): (await control.create_key(team, data_class=own)).key
        for team in ("dc-conf", "dc-none")
        for own in (None, "public", "restricted")
    }
    await keys.reload()
    classes = {combo: principal_of(mesh, key).data_class for combo, key in made.items()}
    assert classes == {
        ("dc-conf", None): "confidential",
        ("dc-conf", "public"): "confidential",  # a key cannot be laxer than its team
        ("dc-conf", "restricted"): "restricted",
        ("dc-none", None): None,
        ("dc-none", "public"): "public",
        ("dc-none", "restricted"): "restricted",
    }
    # A team's change reaches its keys with the next reload.
    await control.update_team("dc-none", {"data_class": "confidential"})
    await keys.reload()
    assert principal_of(mesh, made[("dc-none", None)]).data_class == "confidential"
    assert principal_of(mesh, made[("dc-none", "restricted")]).data_class == "restricted"
    assert ANONYMOUS.data_class is None


async def test_an_oidc_principal_takes_its_teams_class(oidc_mesh: AppClient) -> None:  # noqa: F811
    control, keys = oidc_mesh.runtime.control, oidc_mesh.runtime.keys
    assert control is not None and keys is not None
    await control.create_team("dc-oidc", Limits(), data_class="restricted")
    await keys.reload()
    principal = oidc_mesh.runtime.policy.authenticate(bearer(token(team="dc-oidc")))
    assert principal.team == "dc-oidc" and principal.data_class == "restricted"
    assert oidc_mesh.runtime.policy.authenticate(bearer(token(team="dc-no-such-team"))).data_class is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_class_survives_a_restart(tmp_path: Path, fake_upstream: FakeOpenAI, backend: str) -> None:
    yaml = upstream_models_yaml(fake_upstream.base_url)
    database: dict[str, str] = {}
    schema = None
    if backend == "postgresql":
        url, schema = await pg_url()
        database["database_url"] = url
    try:
        first = await AppClient.started(make_runtime(tmp_path, yaml, **database))
        try:
            created = await first.http.post("/admin/teams", json={"name": "kept", "data_class": "confidential"})
            assert created.status_code == 201, created.text
            made = await first.http.post("/admin/keys", json={"team": "kept", "data_class": "restricted"})
            assert made.status_code == 201, made.text
            other = await first.http.post("/admin/keys", json={"team": "kept"})
            key, other_key = made.json()["key"], other.json()["key"]
        finally:
            await first.http.aclose()
            await first.runtime.stop()

        # A new server on the same database: its KeyStore loads the classes with the keys.
        second = await AppClient.started(make_runtime(tmp_path, yaml, **database))
        try:
            assert principal_of(second, key).data_class == "restricted"
            assert principal_of(second, other_key).data_class == "confidential"
            assert second.runtime.keys is not None
            assert second.runtime.keys.teams["kept"].data_class == "confidential"
            assert (await second.http.get("/admin/keys/" + made.json()["id"])).json()["data_class"] == "restricted"
        finally:
            await second.http.aclose()
            await second.runtime.stop()
    finally:
        if schema is not None:
            await drop_schema(schema)


# -- a call's class -------------------------------------------------------------------------------


def caller(data_class: str | None) -> Principal:
    return Principal(key_id="key_x", key_name="x", team="t", role="app", grants=ANONYMOUS.grants, data_class=data_class)


def test_without_a_header_a_call_has_its_principals_class_or_the_default() -> None:
    assert DEFAULT_DATA_CLASS == "internal"
    assert call_data_class(None, None) == DEFAULT_DATA_CLASS
    assert call_data_class(ANONYMOUS, None) == DEFAULT_DATA_CLASS
    assert call_data_class(caller(None), None) == DEFAULT_DATA_CLASS
    for own in DATA_CLASSES:
        assert call_data_class(caller(own), None) == own


@pytest.mark.parametrize("own", [None, *DATA_CLASSES])
@pytest.mark.parametrize("header", DATA_CLASSES)
def test_a_header_raises_a_calls_class_and_never_lowers_it(own: str | None, header: str) -> None:
    effective = own or DEFAULT_DATA_CLASS
    expected = max(effective, header, key=DATA_CLASSES.index)
    assert call_data_class(caller(own), header) == expected
    assert DATA_CLASSES.index(expected) >= DATA_CLASSES.index(effective)
    assert call_data_class(caller(own), f" {header.upper()} ") == expected


def test_raising_and_not_lowering_by_example() -> None:
    assert call_data_class(caller("internal"), "restricted") == "restricted"
    assert call_data_class(caller("confidential"), "public") == "confidential"
    assert call_data_class(caller(None), "public") == "internal"  # not below the default either
    assert call_data_class(caller("public"), "public") == "public"
    assert call_data_class(None, "confidential") == "confidential"


@pytest.mark.parametrize("header", ["secret", "", "  ", "public,restricted", "internal;q=1", "4"])
def test_a_header_that_is_not_a_data_class_is_a_400(header: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        call_data_class(caller("confidential"), header)
    error = raised.value
    assert error.status == 400 and error.param == DATA_CLASS_HEADER == "x-meshgate-data-class"
    assert error.code == "invalid_value"
    assert repr(header) in error.message and ", ".join(DATA_CLASSES) in error.message


def test_a_long_bad_header_is_clipped_in_the_message() -> None:
    with pytest.raises(InvalidRequest) as raised:
        call_data_class(None, "x" * 100_000)
    assert len(raised.value.message) < 200 and "…" in raised.value.message
