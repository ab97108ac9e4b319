"""A grounded answer from the real local models (embedded defaults): `local-embed` retrieves,
`local-chat` answers from the numbered sources, and the citation names the right document."""

from __future__ import annotations

import pytest

from tests.conftest import AppClient

pytestmark = pytest.mark.slow

POLICY = """# Travel policy

## Booking flights

Employees book flights through the Contoso travel portal at least fourteen days before departure.

## Expenses

Meal expenses are reimbursed up to 60 euros per day with receipts.
"""

GARDEN = """# Garden club

The garden club meets on Thursdays in the greenhouse behind building C. Tomatoes are planted in May.
"""


async def test_local_chat_answers_from_the_bank_with_a_citation(local_client: AppClient) -> None:
    http = local_client.http
    assert (await http.post("/v1/banks", json={"name": "local-docs"})).status_code == 201
    for source, text in (("policy/travel.md", POLICY), ("clubs/garden.md", GARDEN)):
        added = await http.post(
            "/v1/banks/local-docs/documents", json={"text": text, "source": source, "format": "markdown"}
        )
        assert added.status_code == 201, added.text
    response = await http.post(
        "/v1/chat/completions",
        json={
            "model": "local-chat",
            "temperature": 0,
            "max_tokens": 48,
            "messages": [{"role": "user", "content": "How many days before departure must flights be booked?"}],
            "knowledge": {"banks": ["local-docs"], "top_k": 2},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["abstained"] is False, body
    answer = body["choices"][0]["message"]["content"]
    assert "fourteen" in answer.lower() or "14" in answer, answer
    assert body["citations"] and body["citations"][0]["source"] == "policy/travel.md", body["citations"]
    assert f"[{body['citations'][0]['index']}]" in answer
    uncovered = await http.post(
        "/v1/chat/completions",
        json={
            "model": "local-chat",
            "messages": [{"role": "user", "content": "What is the capital of Australia?"}],
            "knowledge": {"banks": ["local-docs"]},
        },
    )
    assert uncovered.json()["abstained"] is True
