"""Knowledge banks through the real app: create, ingest (multipart and JSON), list, search with
ACLs enforced per principal, grounded chat with citations (plain and streamed) and abstention,
deletion, and errors in the API's schema. The model behind the chat is a real HTTP upstream on
loopback that echoes; the embedder is the real local one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime

HANDBOOK = """# Travel policy

## Booking flights

Employees book flights through the Contoso travel portal at least fourteen days before departure.
Economy class is the default for flights under six hours.

## Expenses

Meal expenses are reimbursed up to 60 euros per day with receipts. Taxi rides need a receipt too.
"""

SALARIES = """# Salary bands 2026

The engineering salary band for level five runs from 95,000 to 120,000 euros. Bonuses are paid in March.
"""


def mesh_yaml(base: str) -> str:
    return f"""
    models:
      - {{name: local-embed, provider: local-embedding}}
      - {{name: echo-chat, provider: openai-compatible, model: echo, base_url: "{base}", hosting: local}}
      - {{name: cloud-chat, provider: openai-compatible, model: echo, base_url: "{base}", hosting: cloud}}
    """


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def admin(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> AsyncIterator[AppClient]:
    runtime = make_runtime(tmp_path_factory.mktemp("banks"), mesh_yaml(upstream.base_url))
    client = await AppClient.started(runtime)
    yield client
    await client.http.aclose()
    await runtime.stop()


async def key_for(admin: AppClient, team: str, role: str = "developer") -> dict[str, str]:
    runtime = admin.runtime
    assert runtime.control is not None and runtime.keys is not None
    created = await runtime.control.create_key(team, role=role)
    await runtime.keys.reload()
    return {"authorization": f"Bearer {created.key}"}


@pytest.fixture(scope="module")
async def bank(admin: AppClient) -> str:
    response = await admin.http.post("/v1/banks", json={"name": "handbook", "team": "people"})
    assert response.status_code == 201, response.text
    upload = await admin.http.post(
        "/v1/banks/handbook/documents",
        files=[("file", ("travel.md", HANDBOOK.encode(), "text/markdown"))],
        data={"acl": "public"},
    )
    assert upload.status_code == 201, upload.text
    assert upload.json()["added"] == 1
    secret = await admin.http.post(
        "/v1/banks/handbook/documents",
        json={
            "text": SALARIES,
            "title": "Salary bands",
            "source": "hr/salaries.md",
            "format": "markdown",
            "acl": "team:hr",
        },
    )
    assert secret.status_code == 201, secret.text
    return "handbook"


async def test_search_returns_the_issue_fields(admin: AppClient, bank: str) -> None:
    response = await admin.http.post(
        f"/v1/banks/{bank}/search", json={"query": "how much for meals per day", "top_k": 3}
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data, "nothing found"
    first = data[0]
    assert set(first) >= {"text", "score", "document_id", "chunk_id", "source", "title", "page", "section"}
    assert "60 euros" in first["text"]
    assert first["section"] and "Expenses" in first["section"]


async def test_a_team_without_access_never_sees_restricted_chunks(admin: AppClient, bank: str) -> None:
    outsider = await key_for(admin, "sales")
    insider = await key_for(admin, "hr")
    query = {"query": "engineering salary band level five", "top_k": 5}
    seen_by_outsider = (await admin.http.post(f"/v1/banks/{bank}/search", json=query, headers=outsider)).json()["data"]
    seen_by_insider = (await admin.http.post(f"/v1/banks/{bank}/search", json=query, headers=insider)).json()["data"]
    assert all("95,000" not in hit["text"] for hit in seen_by_outsider)
    assert any("95,000" in hit["text"] for hit in seen_by_insider)
    # The admin reads only what ACLs grant it unless it asks, and asking is audited.
    as_admin = (await admin.http.post(f"/v1/banks/{bank}/search", json=query)).json()["data"]
    assert all("95,000" not in hit["text"] for hit in as_admin)
    read_all = (await admin.http.post(f"/v1/banks/{bank}/search", json={**query, "read_all": True})).json()["data"]
    assert any("95,000" in hit["text"] for hit in read_all)
    denied = await admin.http.post(f"/v1/banks/{bank}/search", json={**query, "read_all": True}, headers=insider)
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error" or denied.json()["error"]["code"]
    # A document list shows a reader only what its ACLs grant.
    listed = (await admin.http.get(f"/v1/banks/{bank}/documents", headers=outsider)).json()["data"]
    assert [d["title"] for d in listed] == ["Travel policy"]


async def test_grounded_chat_cites_its_sources(admin: AppClient, bank: str, upstream: FakeOpenAI) -> None:
    response = await admin.http.post(
        "/v1/chat/completions",
        json={
            "model": "echo-chat",
            "messages": [{"role": "user", "content": "How many days before departure must flights be booked?"}],
            "knowledge": {"banks": [bank], "top_k": 3},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["abstained"] is False
    assert body["citations"], body
    citation = body["citations"][0]
    assert set(citation) >= {"index", "document_id", "source", "title", "page", "chunk_id", "quote"}
    assert citation["source"] == "upload:travel.md"
    sent = upstream.state.requests[-1].body
    assert sent["messages"][0]["role"] == "system" and "[1]" in sent["messages"][0]["content"]
    assert "fourteen days" in sent["messages"][0]["content"]
    assert "knowledge" not in sent
    assert f"[{citation['index']}]" in body["choices"][0]["message"]["content"]


async def test_grounded_stream_ends_with_a_citations_chunk(admin: AppClient, bank: str) -> None:
    async with admin.http.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "echo-chat",
            "stream": True,
            "messages": [{"role": "user", "content": "What is the daily limit for meal expenses?"}],
            "knowledge": {"banks": [bank]},
        },
    ) as response:
        assert response.status_code == 200
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["abstained"] is False and last["citations"]
    assert last["citations"][0]["quote"]


async def test_an_uncovered_question_abstains_without_asking_the_model(
    admin: AppClient, bank: str, upstream: FakeOpenAI
) -> None:
    before = len(upstream.state.requests)
    response = await admin.http.post(
        "/v1/chat/completions",
        json={
            "model": "echo-chat",
            "messages": [{"role": "user", "content": "Which volcano erupted in Iceland in 2010?"}],
            "knowledge": {"banks": [bank]},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["abstained"] is True and body["citations"] == []
    assert "cannot answer" in body["choices"][0]["message"]["content"]
    assert len(upstream.state.requests) == before


async def test_restricted_chunks_keep_the_answer_on_local_models(admin: AppClient, bank: str) -> None:
    hr = await key_for(admin, "hr")
    await admin.http.post(
        f"/v1/banks/{bank}/documents",
        json={
            "text": "Payroll test account access key: AKIAIOSFODNN7EXAMPL3 (rotate monthly).",
            "source": "hr/ssn.txt",
            "acl": "team:hr",
        },
    )
    question = {"role": "user", "content": "Which access key does the payroll test account use?"}
    cloud = await admin.http.post(
        "/v1/chat/completions",
        json={"model": "cloud-chat", "messages": [question], "knowledge": {"banks": [bank]}},
        headers=hr,
    )
    assert cloud.status_code == 403, cloud.text
    assert cloud.json()["error"]["code"] == "data_class_forbidden"
    local = await admin.http.post(
        "/v1/chat/completions",
        json={"model": "echo-chat", "messages": [question], "knowledge": {"banks": [bank]}},
        headers=hr,
    )
    assert local.status_code == 200, local.text


async def test_json_bodies_take_one_document_or_a_list(admin: AppClient, bank: str) -> None:
    # A single document whose fields hold the word "documents" is still a single document.
    one = await admin.http.post(
        f"/v1/banks/{bank}/documents", json={"text": "Archive rules for old documents.", "title": "documents"}
    )
    assert one.status_code == 201, one.text
    many = await admin.http.post(
        f"/v1/banks/{bank}/documents",
        json={
            "documents": [{"text": "Visitors sign in at reception."}, {"text": "Parking is free.", "acl": "team:ops"}]
        },
    )
    assert many.status_code == 201 and many.json()["added"] == 2, many.text
    listed = {d["source"]: d["acl"] for d in (await admin.http.get(f"/v1/banks/{bank}/documents")).json()["data"]}
    assert ["team:ops"] in listed.values() and ["public"] in listed.values()
    both = await admin.http.post(
        f"/v1/banks/{bank}/documents", json={"documents": [{"text": "x y z"}], "text": "and this too"}
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "documents"


async def test_errors_in_the_api_schema(admin: AppClient, bank: str) -> None:
    missing = await admin.http.post("/v1/banks/nope/search", json={"query": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "bank_not_found"
    bad_acl = await admin.http.post(f"/v1/banks/{bank}/documents", json={"text": "hello there", "acl": "teams:x"})
    assert bad_acl.status_code == 400 and bad_acl.json()["error"]["code"] == "invalid_acl"
    broken = await admin.http.post(
        f"/v1/banks/{bank}/documents", files=[("file", ("broken.pdf", b"%PDF-1.7 garbage", "application/pdf"))]
    )
    assert broken.status_code == 422, broken.text
    assert broken.json()["failed"] == 1 and broken.json()["failures"][0]["reason"]
    unknown_bank_chat = await admin.http.post(
        "/v1/chat/completions",
        json={"model": "echo-chat", "messages": [{"role": "user", "content": "hi"}], "knowledge": {"banks": ["nope"]}},
    )
    assert unknown_bank_chat.status_code == 404
    duplicate = await admin.http.post("/v1/banks", json={"name": bank})
    assert duplicate.status_code == 409
    bad_filter = await admin.http.post(f"/v1/banks/{bank}/search", json={"query": "x", "filters": {"colour": "red"}})
    assert bad_filter.status_code == 400


def _texts(hits: list[dict[str, Any]]) -> str:
    return " ".join(hit["text"] for hit in hits)


async def test_anthropic_messages_take_knowledge_too(admin: AppClient, bank: str) -> None:
    response = await admin.http.post(
        "/v1/messages",
        json={
            "model": "echo-chat",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "How many days before departure must flights be booked?"}],
            "knowledge": {"banks": [bank]},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "message" and body["abstained"] is False
    assert body["citations"] and body["citations"][0]["source"] == "upload:travel.md"
    async with admin.http.stream(
        "POST",
        "/v1/messages",
        json={
            "model": "echo-chat",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "Which volcano erupted in Iceland in 2010?"}],
            "knowledge": {"banks": [bank]},
        },
    ) as streamed:
        events = [json.loads(line[6:]) async for line in streamed.aiter_lines() if line.startswith("data: ")]
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["abstained"] is True and delta["citations"] == []
    assert events[-1]["type"] == "message_stop"


async def test_other_teams_cannot_manage_and_deleting_removes_chunks(admin: AppClient, bank: str) -> None:
    outsider = await key_for(admin, "sales")
    docs = (await admin.http.get(f"/v1/banks/{bank}/documents")).json()["data"]
    travel = next(d for d in docs if d["title"] == "Travel policy")
    refused = await admin.http.delete(f"/v1/banks/{bank}/documents/{travel['id']}", headers=outsider)
    assert refused.status_code == 403
    owner = await key_for(admin, "people")
    response = await admin.http.delete(f"/v1/banks/{bank}/documents/{travel['id']}", headers=owner)
    assert response.status_code == 200, response.text
    hits = (await admin.http.post(f"/v1/banks/{bank}/search", json={"query": "meal expenses receipts"})).json()["data"]
    assert all(hit["document_id"] != travel["id"] for hit in hits)
