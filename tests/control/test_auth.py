"""Authentication, grants and the admin API, through the app in process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meshgate.control.records import Limits
from meshgate.errors import ConfigError
from meshgate.settings import resolve_settings
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime, upstream_models_yaml
from tests.control.test_ratelimit import fresh_window
from tests.store.test_database_contract import _drop_schema as drop_schema
from tests.store.test_database_contract import _pg_url as pg_url
from tests.test_api_errors import assert_openai_error

CHAT = "/v1/chat/completions"
HELLO = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI
) -> AsyncIterator[AppClient]:
    """The control suite runs once on SQLite and once on PostgreSQL (a schema of its own)."""
    yaml = upstream_models_yaml(fake_upstream.base_url).replace(
        "  - name: slow\n",
        "  - name: limited\n    provider: openai-compatible\n    model: echo\n"
        f"    base_url: {fake_upstream.base_url}\n    api_key: ${{TEST_UPSTREAM_KEY}}\n    rpm: 3\n  - name: slow\n",
    )
    database: dict[str, str] = {}
    schema = None
    if request.param == "postgresql":
        url, schema = await pg_url()
        database["database_url"] = url
    runtime = make_runtime(tmp_path_factory.mktemp("auth"), yaml, **database)
    client = await AppClient.started(runtime)
    yield client
    await client.http.aclose()
    await runtime.stop()
    if schema is not None:
        await drop_schema(schema)


async def new_key(mesh: AppClient, **kwargs: object) -> str:
    assert mesh.runtime.control is not None and mesh.runtime.keys is not None
    created = await mesh.runtime.control.create_key(kwargs.pop("team", "t1"), **kwargs)  # type: ignore[arg-type]
    await mesh.runtime.keys.reload()
    return created.key


def as_key(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


async def post(mesh: AppClient, key: str | None, body: dict = HELLO, path: str = CHAT) -> httpx.Response:
    return await mesh.http.post(path, json=body, headers={"authorization": f"Bearer {key}" if key else ""})


async def test_missing_and_bad_keys_are_401(mesh: AppClient) -> None:
    no_key = await mesh.http.post(CHAT, json=HELLO, headers={"authorization": ""})
    error = assert_openai_error(no_key, 401, code="invalid_api_key")
    assert "didn't provide an API key" in error["message"]
    for bad in ("mg-not-a-real-key", "sk-something", mesh.key + "x"):
        assert_openai_error(await post(mesh, bad), 401, code="invalid_api_key")
    assert (await mesh.http.get("/v1/models", headers={"authorization": "Basic abc"})).status_code == 401


async def test_bearer_and_x_api_key_both_work(mesh: AppClient) -> None:
    key = await new_key(mesh)
    assert (await post(mesh, key)).status_code == 200
    response = await mesh.http.post(CHAT, json=HELLO, headers={"authorization": "", "x-api-key": key})
    assert response.status_code == 200


async def test_public_probes_need_no_key(mesh: AppClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await mesh.http.get(path, headers={"authorization": ""})).status_code == 200


async def test_revoked_and_expired_keys_are_refused_like_unknown_ones(mesh: AppClient) -> None:
    key = await new_key(mesh, name="to-revoke")
    assert (await post(mesh, key)).status_code == 200
    assert mesh.runtime.control is not None and mesh.runtime.keys is not None
    await mesh.runtime.control.revoke_key("to-revoke")
    await mesh.runtime.keys.reload()
    revoked = await post(mesh, key)
    assert_openai_error(revoked, 401)
    unknown = await post(mesh, "mg-unknown")
    assert revoked.json()["error"]["message"] == unknown.json()["error"]["message"]

    soon = await new_key(mesh, expires_at=time.time() + 0.5)
    assert (await post(mesh, soon)).status_code == 200
    await asyncio.sleep(0.6)
    assert_openai_error(await post(mesh, soon), 401)


async def test_key_model_allow_list_is_403_naming_the_grant(mesh: AppClient) -> None:
    key = await new_key(mesh, models=("remote-*",))
    response = await post(mesh, key)
    error = assert_openai_error(response, 403, code="permission_denied")
    assert "model:bench:use" in error["message"]
    embed = await post(mesh, key, {"model": "remote-embed", "input": "x"}, "/v1/embeddings")
    assert embed.status_code == 200


async def test_team_model_allow_list(mesh: AppClient) -> None:
    assert mesh.runtime.control is not None
    await mesh.runtime.control.create_team("narrow", Limits(), ("limited",))
    key = await new_key(mesh, team="narrow")
    error = assert_openai_error(await post(mesh, key), 403)
    assert "team `narrow`" in error["message"] and "model:bench:use" in error["message"]


async def test_roles_and_admin_grants(mesh: AppClient) -> None:
    app_key = await new_key(mesh, role="app")
    assert (await post(mesh, app_key)).status_code == 200
    denied = await mesh.http.get("/admin/keys", headers=as_key(app_key))
    error = assert_openai_error(denied, 403)
    assert "admin:keys:read" in error["message"]
    developer = await new_key(mesh, role="developer")
    denied = await mesh.http.post("/admin/teams", json={"name": "x"}, headers=as_key(developer))
    assert "admin:teams:write" in assert_openai_error(denied, 403)["message"]


async def test_admin_api_manages_keys_and_teams(mesh: AppClient) -> None:
    team = await mesh.http.post("/admin/teams", json={"name": "analytics", "rpm": 100})
    assert team.status_code == 201 and team.json()["rpm"] == 100
    assert (await mesh.http.post("/admin/teams", json={"name": "analytics"})).status_code == 409
    patched = await mesh.http.patch("/admin/teams/analytics", json={"tpm": 5000})
    assert patched.json()["tpm"] == 5000 and patched.json()["rpm"] == 100
    created = await mesh.http.post("/admin/keys", json={"team": "analytics", "name": "etl", "role": "app"})
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("mg-") and created.json()["hint"].endswith(secret[-4:])
    listed = (await mesh.http.get("/admin/keys")).text
    assert secret not in listed and "key_hash" not in listed and '"etl"' in listed
    assert (await post(mesh, secret)).status_code == 200

    rotated = await mesh.http.post("/admin/keys/etl/rotate")
    new_secret = rotated.json()["key"]
    assert new_secret != secret and rotated.json()["id"] == created.json()["id"]
    assert_openai_error(await post(mesh, secret), 401)
    assert (await post(mesh, new_secret)).status_code == 200

    assert (await mesh.http.post("/admin/keys/etl/revoke")).json()["revoked_at"] is not None
    assert_openai_error(await post(mesh, new_secret), 401)
    assert_openai_error(await mesh.http.post("/admin/keys/nope/revoke"), 404)
    bad = await mesh.http.post("/admin/keys", json={"team": "analytics", "role": "wizard"})
    assert_openai_error(bad, 400, param="role")


async def test_exact_key_rpm_under_concurrency(mesh: AppClient) -> None:
    await fresh_window()
    key = await new_key(mesh, limits=Limits(rpm=5))
    responses = await asyncio.gather(*(post(mesh, key) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 5 and statuses.count(429) == 15
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "5"
    assert 0 <= int(ok.headers["x-ratelimit-remaining-requests"]) < 5
    limited = next(r for r in responses if r.status_code == 429)
    error = assert_openai_error(limited, 429, code="rate_limit_exceeded")
    assert "5 requests per minute" in error["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60


async def test_team_limit_is_shared_by_its_keys(mesh: AppClient) -> None:
    await fresh_window()
    assert mesh.runtime.control is not None
    await mesh.runtime.control.create_team("shared", Limits(rpm=4))
    one, two = await new_key(mesh, team="shared"), await new_key(mesh, team="shared")
    statuses = [(await post(mesh, k)).status_code for k in (one, two, one, two, one, two)]
    assert statuses == [200, 200, 200, 200, 429, 429]


async def test_model_limit_from_mesh_yaml(mesh: AppClient) -> None:
    await fresh_window()
    key = await new_key(mesh)
    body = {**HELLO, "model": "limited"}
    statuses = [(await post(mesh, k, body)).status_code for k in (key, mesh.key, key, mesh.key)]
    assert statuses == [200, 200, 200, 429]


async def test_tpm_reserves_worst_case_and_settles_real_usage(mesh: AppClient) -> None:
    await fresh_window()
    key = await new_key(mesh, limits=Limits(tpm=300))
    too_big = await post(mesh, key, {**HELLO, "max_tokens": 400})
    assert "tokens per minute" in assert_openai_error(too_big, 429)["message"]
    first = await post(mesh, key, {**HELLO, "max_tokens": 100})
    assert first.status_code == 200
    reserved = 300 - int(first.headers["x-ratelimit-remaining-tokens"])
    assert reserved >= 100  # the worst case: the prompt's bytes plus max_tokens
    used = first.json()["usage"]["total_tokens"]
    second = await post(mesh, key, {**HELLO, "max_tokens": 100})
    # The first call was corrected from its reservation down to what it used.
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 300 - used - reserved


def test_no_auth_only_on_loopback(tmp_path: Path) -> None:
    assert resolve_settings({"auth": False}, {}).auth is False
    with pytest.raises(ConfigError, match="loopback"):
        resolve_settings({"auth": False, "host": "0.0.0.0"}, {})


async def test_admin_usage_report(mesh: AppClient) -> None:
    key = await new_key(mesh, team="reporting")
    for _ in range(3):
        assert (await post(mesh, key)).status_code == 200
    report = (await mesh.http.get("/admin/usage", params={"by": "team", "since": "1h"})).json()
    row = next(r for r in report["data"] if r["team"] == "reporting")
    assert row["requests"] == 3 and row["cost_usd"] > 0
    assert_openai_error(await mesh.http.get("/admin/usage", params={"by": "colour"}), 400, param="by")
    assert_openai_error(await mesh.http.get("/admin/usage", headers=as_key(key)), 403)
