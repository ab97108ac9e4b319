"""The issue's "done when", on a fresh data dir: the CLI ingests a folder of PDF, DOCX, HTML and
Markdown files (progress and summary), a running server finds them within a second, a grounded chat
cites the right document and abstains on an uncovered question, a team without access never sees a
restricted document's chunks, and `meshgate erase --subject` leaves no trace that a search, the
cache or a byte search of the data dir can find, while `meshgate audit verify` still passes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime
from tests.knowledge.fixtures import make_docx, make_pdf, truncate

pytestmark = pytest.mark.slow

SUBJECT = "jane.doe@example.com"


def write_corpus(folder: Path) -> None:
    folder.mkdir()
    (folder / "travel.md").write_text(
        "# Travel policy\n\n## Booking\n\nFlights are booked through the Contoso portal fourteen days "
        "before departure.\n\n## Expenses\n\nMeals are reimbursed up to 60 euros per day.\n"
    )
    (folder / "security.html").write_text(
        "<html><head><title>Security rules</title></head><body><nav>Home | About | Login</nav>"
        "<main><h1>Security rules</h1><p>Laptops must be locked with a password when unattended.</p>"
        "<p>Lost badges are reported to the front desk within one hour.</p></main>"
        "<footer>Copyright Contoso</footer></body></html>"
    )
    (folder / "guide.docx").write_bytes(make_docx())
    (folder / "handbook.pdf").write_bytes(
        make_pdf(
            [
                ["The onboarding buddy meets new hires on their first morning."],
                [f"Questions about payroll go to Jane Doe at {SUBJECT}, extension 4410."],
            ],
            title="Employee handbook",
        )
    )
    (folder / "broken.pdf").write_bytes(truncate(make_pdf([["This file was cut short in transfer."]]), 0.4))


def cli(data_dir: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHGATE_DATA_DIR": str(data_dir), "MESHGATE_CONFIG": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "meshgate", *args], env=env, capture_output=True, text=True, timeout=300
    )


def mesh_yaml(base: str) -> str:
    return f"""
    server: {{audit_content: full}}
    cache: {{mode: exact, backend: sqlite}}
    models:
      - {{name: local-embed, provider: local-embedding}}
      - {{name: echo-chat, provider: openai-compatible, model: echo, base_url: "{base}", hosting: local}}
    """


async def search(client: AppClient, query: str, **extra: Any) -> list[dict[str, Any]]:
    response = await client.http.post("/v1/banks/docs/search", json={"query": query, "top_k": 5}, **extra)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_done_when(tmp_path: Path) -> None:
    with FakeOpenAI() as upstream:
        runtime = make_runtime(tmp_path, mesh_yaml(upstream.base_url))
        config = tmp_path / "mesh.yaml"
        data_dir = runtime.settings.data_dir
        client = await AppClient.started(runtime)
        try:
            created = await asyncio.to_thread(cli, data_dir, config, "banks", "create", "docs", "--team", "people")
            assert created.returncode == 0, created.stderr
            corpus = tmp_path / "corpus"
            write_corpus(corpus)
            ingested = await asyncio.to_thread(cli, data_dir, config, "banks", "ingest", "docs", str(corpus))
            # One broken file: reported with its reason, exit status 1, the rest ingested.
            assert ingested.returncode == 1, ingested.stderr
            assert "4 added" in ingested.stdout and "1 failed" in ingested.stdout, ingested.stdout
            assert "broken.pdf" in ingested.stderr and "files" in ingested.stderr and "ETA" in ingested.stderr
            restricted = cli(
                data_dir, config, "banks", "ingest", "docs", str(corpus / "travel.md"), "--acl", "team:finance"
            )
            assert restricted.returncode == 0, restricted.stderr

            # The running server finds the CLI's documents within a second.
            deadline = time.monotonic() + 1.0
            while not (hits := await search(client, "what do laptops need when unattended")):
                assert time.monotonic() < deadline, "the server did not see the CLI's documents"
                await asyncio.sleep(0.1)
            assert "locked with a password" in hits[0]["text"]
            assert (await search(client, "onboarding buddy first morning"))[0]["page"] == 1

            # Grounded chat: cites the handbook's page 2; abstains on an uncovered question.
            chat = await client.http.post(
                "/v1/chat/completions",
                json={
                    "model": "echo-chat",
                    "messages": [{"role": "user", "content": f"Who answers payroll questions, {SUBJECT}?"}],
                    "knowledge": {"banks": ["docs"]},
                },
            )
            body = chat.json()
            assert body["abstained"] is False, body
            assert any(c["title"] == "Employee handbook" and c["page"] == 2 for c in body["citations"]), body
            uncovered = await client.http.post(
                "/v1/chat/completions",
                json={
                    "model": "echo-chat",
                    "messages": [{"role": "user", "content": "What is the boiling point of mercury in kelvin?"}],
                    "knowledge": {"banks": ["docs"]},
                },
            )
            assert uncovered.json()["abstained"] is True

            # Access: the re-ingested travel policy is now team:finance only.
            sales = await runtime.control.create_key("sales", role="developer")  # type: ignore[union-attr]
            await runtime.keys.reload()  # type: ignore[union-attr]
            seen = await search(client, "meals reimbursed per day", headers={"authorization": f"Bearer {sales.key}"})
            assert all("60 euros" not in hit["text"] for hit in seen)

            # The subject is in the bank, the audit content and the cache (the echo answer holds it).
            cached = await client.http.post(
                "/v1/chat/completions",
                json={
                    "model": "echo-chat",
                    "messages": [{"role": "user", "content": f"mail {SUBJECT}"}],
                    "temperature": 0,
                },
            )
            assert SUBJECT in cached.text
            stored = await client.http.post("/v1/responses", json={"model": "echo-chat", "input": f"mail {SUBJECT}"})
            assert stored.status_code == 200 and SUBJECT in stored.text, stored.text
        finally:
            await client.http.aclose()
            await runtime.stop()

        erased = await asyncio.to_thread(cli, data_dir, config, "erase", "--subject", SUBJECT, "--json")
        assert erased.returncode == 0, erased.stderr
        receipt = json.loads(erased.stdout)["counts"]
        assert receipt["documents"] == 1 and receipt["chunks"] >= 1, receipt
        assert receipt["audit_contents"] >= 1 and receipt["cache_entries"] >= 1, receipt
        assert receipt["stored_responses"] == 1, receipt

        needles = [SUBJECT.encode(), SUBJECT.encode("utf-16-le")]
        for path in data_dir.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(n in data for n in needles), f"{path} still holds the subject"
        verified = await asyncio.to_thread(cli, data_dir, config, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr

        runtime = make_runtime(tmp_path, mesh_yaml(upstream.base_url))
        client = await AppClient.started(runtime)
        try:
            for query in (SUBJECT, "payroll questions Jane Doe"):
                response = await client.http.post("/v1/banks/docs/search", json={"query": query, "read_all": True})
                assert response.status_code == 200, response.text
                assert all(SUBJECT not in hit["text"] for hit in response.json()["data"])
        finally:
            await client.http.aclose()
            await runtime.stop()
