"""OIDC bearer tokens, signed with keys generated here, checked against a JWKS file and a JWKS URL."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from meshgate.control.records import Limits
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, free_port, make_runtime, upstream_models_yaml
from tests.control.test_ratelimit import fresh_window
from tests.test_api_errors import assert_openai_error

ISSUER, AUDIENCE = "https://login.example.test/", "meshgate"
CHAT = "/v1/chat/completions"
HELLO = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}

SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**public, "kid": kid, "alg": "RS256", "use": "sig"}]}


def token(key: rsa.RSAPrivateKey = SIGNING_KEY, kid: str = "k1", **claims: Any) -> str:
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": time.time() + 300,
        "team": "research",
        "roles": ["developer"],
        **claims,
    }
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
async def oidc_mesh(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI) -> AsyncIterator[AppClient]:
    tmp = tmp_path_factory.mktemp("oidc")
    (tmp / "jwks.json").write_text(json.dumps(jwks(SIGNING_KEY, "k1")))
    runtime = make_runtime(
        tmp,
        upstream_models_yaml(fake_upstream.base_url),
        oidc_jwks=str(tmp / "jwks.json"),
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
    )
    client = await AppClient.started(runtime)
    yield client
    await client.http.aclose()
    await runtime.stop()


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


async def test_valid_token_is_a_caller(oidc_mesh: AppClient) -> None:
    response = await oidc_mesh.http.post(CHAT, json=HELLO, headers=bearer(token()))
    assert response.status_code == 200
    assert oidc_mesh.runtime.usage is not None and oidc_mesh.runtime.db is not None
    await oidc_mesh.runtime.usage.flush()
    row = await oidc_mesh.runtime.db.fetchone(
        "SELECT key_id, team FROM usage WHERE id = ?", (response.headers["x-request-id"],)
    )
    assert row == {"key_id": "oidc:alice", "team": "research"}


@pytest.mark.parametrize(
    "bad",
    [
        token(key=OTHER_KEY),  # wrong signature
        token(iss="https://evil.test/"),
        token(aud="someone-else"),
        token(exp=time.time() - 10),
        token(kid="unknown"),
        token(team=None),
        token(roles=["wizard"]),
        token()[:-4] + "AAAA",
    ],
)
async def test_bad_tokens_are_401(oidc_mesh: AppClient, bad: str) -> None:
    assert_openai_error(await oidc_mesh.http.post(CHAT, json=HELLO, headers=bearer(bad)), 401, code="invalid_api_key")


async def test_roles_claim_maps_to_grants(oidc_mesh: AppClient) -> None:
    developer = bearer(token())
    assert (
        "admin:keys:read"
        in assert_openai_error(await oidc_mesh.http.get("/admin/keys", headers=developer), 403)["message"]
    )
    admin = bearer(token(roles="admin"))
    assert (await oidc_mesh.http.get("/admin/keys", headers=admin)).status_code == 200


async def test_team_limits_apply_to_token_callers(oidc_mesh: AppClient) -> None:
    await fresh_window()
    assert oidc_mesh.runtime.control is not None and oidc_mesh.runtime.keys is not None
    await oidc_mesh.runtime.control.create_team("capped", Limits(rpm=2), ("bench",))
    await oidc_mesh.runtime.keys.reload()
    headers = bearer(token(team="capped", sub="bob"))
    statuses = [(await oidc_mesh.http.post(CHAT, json=HELLO, headers=headers)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    other_model = await oidc_mesh.http.post(CHAT, json={**HELLO, "model": "paced"}, headers=headers)
    assert "team `capped`" in assert_openai_error(other_model, 403)["message"]


async def test_keys_still_work_beside_tokens(oidc_mesh: AppClient) -> None:
    assert (await oidc_mesh.http.post(CHAT, json=HELLO)).status_code == 200  # the fixture's mg- key


async def test_jwks_from_a_url(tmp_path: Path, fake_upstream: FakeOpenAI) -> None:
    async def serve_jwks(_request: web.Request) -> web.Response:
        return web.json_response(jwks(SIGNING_KEY, "k1"))

    app = web.Application()
    app.router.add_get("/jwks", serve_jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    runtime = make_runtime(
        tmp_path,
        upstream_models_yaml(fake_upstream.base_url),
        oidc_jwks=f"http://127.0.0.1:{port}/jwks",
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
    )
    client = await AppClient.started(runtime)
    try:
        assert (await client.http.post(CHAT, json=HELLO, headers=bearer(token()))).status_code == 200
    finally:
        await client.http.aclose()
        await runtime.stop()
        await runner.cleanup()


async def test_groups_claim_grants_knowledge_bank_documents(oidc_mesh: AppClient) -> None:
    """A document shared with `group:managers` is read by a token whose groups claim holds
    `managers`, and not by one without it (docs/knowledge.md, "Who reads what")."""
    created = await oidc_mesh.http.post("/v1/banks", json={"name": "oidc-docs", "embedder": "remote-embed"})
    assert created.status_code == 201, created.text
    ingested = await oidc_mesh.http.post(
        "/v1/banks/oidc-docs/documents",
        json={"text": "The quarterly reorganisation plan moves two teams.", "acl": "group:managers"},
    )
    assert ingested.status_code == 201, ingested.text
    query = {"query": "quarterly reorganisation plan"}
    manager = await oidc_mesh.http.post(
        "/v1/banks/oidc-docs/search", json=query, headers=bearer(token(groups=["managers", "staff"]))
    )
    other = await oidc_mesh.http.post("/v1/banks/oidc-docs/search", json=query, headers=bearer(token(groups="staff")))
    assert manager.status_code == other.status_code == 200
    assert [hit["text"] for hit in manager.json()["data"]] == ["The quarterly reorganisation plan moves two teams."]
    assert other.json()["data"] == []
