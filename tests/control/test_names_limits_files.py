"""Names every part of meshgate can address, limits that can be cleared again, and a data dir and
database that other local users cannot read."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.names import NAME_PATTERN, valid_name
from meshgate.store.sqlite import SQLiteDatabase, private_dir
from tests.conftest import AppClient
from tests.control.test_auth import as_key, mesh, new_key, post  # noqa: F401 - the module fixture
from tests.control.test_ratelimit import fresh_window
from tests.test_api_errors import assert_openai_error

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "analytics", "local-chat", "team_1", "v1.2", "A" * 64, "9lives"])
def test_valid_names(name: str) -> None:
    assert valid_name(name)
    assert re.fullmatch(NAME_PATTERN, name)


@pytest.mark.parametrize(
    "name", ["", "a/b", "a b", "-a", ".a", "_a", "A" * 65, "a:b", "a*", "é", "a\n", "a?b", "%2F", "a\\b"]
)
def test_invalid_names(name: str) -> None:
    assert not valid_name(name)


async def test_admin_api_refuses_names_it_could_not_address(mesh: AppClient) -> None:  # noqa: F811
    for bad in ("a/b", "a b", "x" * 65, "-lead"):
        error = assert_openai_error(
            await mesh.http.post("/admin/teams", json={"name": bad}), 400, param="name", code="invalid_value"
        )
        assert repr(bad) in error["message"] and "letters, digits" in error["message"]
    assert_openai_error(
        await mesh.http.post("/admin/keys", json={"team": "a/b"}), 400, param="team", code="invalid_value"
    )
    bad_key = await mesh.http.post("/admin/keys", json={"team": "names-ok", "name": "etl job"})
    assert_openai_error(bad_key, 400, param="name", code="invalid_value")
    # A valid team name of the longest length still gets a default key name that is valid.
    long_team = "t" * 64
    created = await mesh.http.post("/admin/keys", json={"team": long_team})
    assert created.status_code == 201, created.text
    assert created.json()["team"] == long_team and valid_name(created.json()["name"])
    # Everything created can be addressed again.
    assert (await mesh.http.patch(f"/admin/teams/{long_team}", json={"rpm": 5})).json()["rpm"] == 5
    assert (await mesh.http.get(f"/admin/keys/{created.json()['name']}")).status_code == 200


# -- clearing limits ------------------------------------------------------------------------------


async def test_patch_null_clears_a_limit_and_omitted_fields_stay(mesh: AppClient) -> None:  # noqa: F811
    body = {"name": "clearable", "rpm": 100, "tpm": 5000, "budget_usd": 10, "budget_period": "day", "models": ["a*"]}
    assert (await mesh.http.post("/admin/teams", json=body)).status_code == 201
    team = (await mesh.http.patch("/admin/teams/clearable", json={"rpm": None})).json()
    assert team["rpm"] is None and team["tpm"] == 5000 and team["budget_usd"] == 10 and team["models"] == ["a*"]
    # A budget cleared takes its period with it; models null means all models again.
    team = (await mesh.http.patch("/admin/teams/clearable", json={"budget_usd": None, "models": None})).json()
    assert team["budget_usd"] is None and team["budget_period"] is None and team["models"] == ["*"]
    assert team["tpm"] == 5000
    team = (await mesh.http.patch("/admin/teams/clearable", json={"tpm": None})).json()
    assert (team["rpm"], team["tpm"]) == (None, None)
    listed = {t["name"]: t for t in (await mesh.http.get("/admin/teams")).json()["data"]}
    assert listed["clearable"]["tpm"] is None
    # null is still not a way around validation of the values that are given.
    assert_openai_error(await mesh.http.patch("/admin/teams/clearable", json={"rpm": 0}), 400, param="rpm")
    bad = await mesh.http.patch("/admin/teams/clearable", json={"budget_usd": 5, "budget_period": None})
    assert_openai_error(bad, 400, param="budget_period")


async def test_a_cleared_team_limit_stops_applying(mesh: AppClient) -> None:  # noqa: F811
    await fresh_window()
    assert (await mesh.http.post("/admin/teams", json={"name": "once", "rpm": 1})).status_code == 201
    key = await new_key(mesh, team="once")
    assert [(await post(mesh, key)).status_code for _ in range(2)] == [200, 429]
    assert (await mesh.http.patch("/admin/teams/once", json={"rpm": None})).status_code == 200
    assert (await post(mesh, key)).status_code == 200


def cli_run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_cli_clears_limits_with_none_and_refuses_bad_names(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "d")]
    code, _ = cli_run(
        "teams", "create", "ops", "--rpm", "60", "--tpm", "900", "--budget", "5", "--budget-period", "week", *data
    )
    assert code == 0
    code, out = cli_run("teams", "update", "ops", "--rpm", "none", "--budget", "None", *data)
    assert code == 0, out
    code, out = cli_run("teams", "list", "--format", "json", *data)
    (team,) = json.loads(out)
    assert (team["rpm"], team["tpm"], team["budget_usd"], team["budget_period"]) == (None, 900, None, None)
    code, out = cli_run("teams", "update", "ops", "--tpm", "NONE", *data)
    assert code == 0 and json.loads(cli_run("teams", "list", "--format", "json", *data)[1])[0]["tpm"] is None
    # Values that are neither a number nor `none` are still refused by the option.
    code, out = cli_run("teams", "update", "ops", "--rpm", "0", *data)
    assert code == 2 and "--rpm" in out
    code, out = cli_run("teams", "update", "ops", "--rpm", "lots", *data)
    assert code == 2 and "none" in out

    code, out = cli_run("teams", "create", "a/b", *data)
    assert code == 1 and "'a/b'" in out and "letters, digits" in out
    code, out = cli_run("keys", "create", "--team", "x y", *data)
    assert code == 1 and "'x y'" in out
    code, out = cli_run("keys", "create", "--team", "ops", "--name", "my key", *data)
    assert code == 1 and "'my key'" in out
    assert "a/b" not in cli_run("teams", "list", *data)[1]


# -- file permissions -----------------------------------------------------------------------------


def test_cli_creates_a_private_data_dir_and_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    assert cli_run("teams", "create", "t", "--data-dir", str(data_dir))[0] == 0
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "meshgate.db") == 0o600


async def test_server_data_dir_and_database_are_private(mesh: AppClient) -> None:  # noqa: F811
    settings = mesh.runtime.settings
    assert mode(settings.data_dir) == 0o700
    if settings.resolved_database_url.startswith("sqlite"):
        db = settings.data_dir / "meshgate.db"
        assert mode(db) == 0o600
        # The server holds its connection open, so the WAL and shared-memory files exist now.
        for suffix in ("-wal", "-shm"):
            assert mode(db.with_name(db.name + suffix)) == 0o600


async def test_sqlite_file_wal_and_shm_are_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.db"
    db = await SQLiteDatabase.open(f"sqlite:///{path}")
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")
        await db.execute("INSERT INTO t VALUES (1)")
        assert mode(path.parent) == 0o700
        for file in (path, path.with_name("x.db-wal"), path.with_name("x.db-shm")):
            assert file.exists() and mode(file) == 0o600, file
    finally:
        await db.close()


async def test_an_existing_readable_database_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        db = await SQLiteDatabase.open(f"sqlite:///{path}")
        await db.close()
    assert mode(path) == 0o600
    assert "0644" in caplog.text and str(path) in caplog.text


def test_an_existing_open_data_dir_is_kept_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        private_dir(shared)
    assert mode(shared) == 0o755  # not ours to change: it may be a directory others need
    assert "0755" in caplog.text and "chmod 700" in caplog.text
    caplog.clear()
    private = tmp_path / "private"
    private_dir(private)
    private_dir(private)
    assert mode(private) == 0o700 and not caplog.text


# -- docstrings -----------------------------------------------------------------------------------


def test_docstrings_name_only_modules_that_exist() -> None:
    """`control/service.py` once sent readers to a `keystore.py` that never existed."""
    existing = {p.name for folder in ("meshgate", "tests", "bench", "scripts") for p in (ROOT / folder).rglob("*.py")}
    for source in (ROOT / "meshgate").rglob("*.py"):
        for named in re.findall(r"\b([a-z_]+\.py)\b", source.read_text(encoding="utf-8")):
            assert named in existing, f"{source.relative_to(ROOT)} names {named}, which does not exist"
