"""Optional reranking of knowledge-bank search (meshgate/knowledge/rerank.py): the shipped model's
sha256 is checked, it reorders a fused list that is plainly wrong, the ACL still holds (a chunk the
caller may not read never appears, even among 50 reranked candidates), the API field, the chat
`knowledge.rerank` option and the CLI flag work, and with reranking off (the default) search
answers exactly what it did before. The embedder is the real local one."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from meshgate.knowledge import rerank
from meshgate.knowledge.config import KnowledgeConfig, RerankSettings
from meshgate.knowledge.index.base import ChunkRef, Hit, Readers
from meshgate.knowledge.index.fusion import KEYWORD_CANDIDATES, VECTOR_CANDIDATES, fuse
from meshgate.protocol import KnowledgeOptions, RerankOptions
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime

# -- the model file ----------------------------------------------------------------------------------


def test_the_shipped_model_loads_and_matches_the_code() -> None:
    model = rerank.Reranker.load()
    assert model.info["features"] == list(rerank.FEATURES)
    assert "tuning half" in model.info["trained_on"]


def test_a_corrupted_model_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    shutil.copytree(rerank.data_dir(), tmp_path, dirs_exist_ok=True)
    path = tmp_path / rerank.MODEL_FILE
    content = bytearray(path.read_bytes())
    position = next(i for i in range(content.index(b'"weights"'), len(content)) if chr(content[i]).isdigit())
    content[position] = ord("9") if content[position] != ord("9") else ord("8")  # one digit of a weight
    path.write_bytes(bytes(content))
    with pytest.raises(rerank.RerankerFileError, match="does not match its manifest"):
        rerank.Reranker.load(tmp_path)
    (tmp_path / "MANIFEST.json").unlink()
    with pytest.raises(rerank.RerankerFileError, match=r"does not list reranker\.json"):
        rerank.Reranker.load(tmp_path)


def test_a_model_for_other_features_is_refused() -> None:
    model = json.loads(rerank.verified_bytes(rerank.MODEL_FILE))
    model["features"] = model["features"][:-1]
    with pytest.raises(rerank.RerankerFileError, match="features"):
        rerank.Reranker(model)


# -- scoring -----------------------------------------------------------------------------------------


def hit(chunk_id: str, text: str, title: str, score: float) -> Hit:
    return Hit(ChunkRef(chunk_id, f"doc-{chunk_id}", text, f"{chunk_id}.md", title), score)


QUERY = "meal expenses reimbursed per day"
# Fused order is wrong: a chunk about the weather, first by a hair on its cosine alone, above the
# chunk that holds every word of the question, in order, under a matching title, and tops BM25.
WEATHER = rerank.Candidate(
    hit("weather", "The weather in the mountains is often cold and wet in winter.", "Climate", 0.40), 0.44, None
)
MEALS = rerank.Candidate(
    hit("meals", "Meal expenses are reimbursed up to 60 euros per day with receipts.", "Meal expenses", 0.39),
    0.38,
    12.5,
)


def test_features_measure_what_they_say() -> None:
    rows = rerank.features(QUERY, [WEATHER, MEALS])
    named = [dict(zip(rerank.FEATURES, row, strict=True)) for row in rows]
    assert named[1]["coverage"] == 1.0 and named[0]["coverage"] == 0.0
    assert named[1]["pairs"] > 0.5 and named[0]["pairs"] == 0.0
    assert named[1]["title"] > 0 and named[1]["bm25"] == 1.0 and named[1]["in_keyword"] == 1.0
    assert named[0]["in_keyword"] == 0.0 and named[0]["inverse_rank"] == 1.0 and named[1]["inverse_rank"] == 0.5


def test_reranking_fixes_a_plainly_wrong_fused_order() -> None:
    reranked = rerank.default_reranker().rerank(QUERY, [WEATHER, MEALS])
    assert [r.hit.chunk.chunk_id for r in reranked] == ["meals", "weather"]
    assert reranked[0].score > reranked[1].score
    # The hits keep their fused score: abstention and min_evidence read it, not the reranker's.
    assert reranked[0].hit.score == 0.39


def test_the_rerank_option_resolves_against_the_servers_default() -> None:
    assert rerank.top_n_of(None) is None  # no request option, server default off
    assert rerank.top_n_of(None, True) == rerank.DEFAULT_TOP_N
    assert rerank.top_n_of(None, RerankSettings(top_n=30)) == 30
    assert rerank.top_n_of(False, True) is None  # a request may turn it off
    assert rerank.top_n_of(RerankOptions(top_n=7)) == 7
    assert rerank.top_n_of({"top_n": 12}) == 12
    assert KnowledgeConfig().rerank is False
    assert KnowledgeConfig.model_validate({"rerank": {"top_n": 30}}).rerank == RerankSettings(top_n=30)


def test_old_chat_requests_encode_the_same() -> None:
    assert msgspec.json.encode(KnowledgeOptions(banks=["docs"])) == b'{"banks":["docs"]}'
    decoded = msgspec.json.decode(b'{"banks":["docs"],"rerank":{"top_n":9}}', type=KnowledgeOptions)
    assert decoded.rerank == RerankOptions(top_n=9)
    assert msgspec.json.decode(b'{"banks":["docs"],"rerank":true}', type=KnowledgeOptions).rerank is True


# -- through the app -----------------------------------------------------------------------------------

POLICIES = {
    "travel.md": "# Travel policy\n\n## Booking flights\n\nEmployees book flights through the Contoso travel "
    "portal at least fourteen days before departure.\n\n## Expenses\n\nMeal expenses are reimbursed up to "
    "60 euros per day with receipts. Taxi rides need a receipt too.\n",
    "canteen.md": "# Canteen\n\nThe canteen serves lunch from noon to two. Meals cost four euros for "
    "employees; guests pay the day rate.\n",
    "security.md": "# Security\n\nLaptops are locked when unattended. Lost badges are reported within one hour.\n",
    "engineering.md": "# Engineering levels\n\nLevel five engineers lead projects across teams and mentor "
    "others. The engineering ladder has seven levels.\n",
}
SALARIES = "# Salary bands 2026\n\nThe engineering salary band for level five runs from 95,000 to 120,000 euros.\n"
SALARY_QUERY = "engineering salary band level five"


def mesh_yaml(base: str) -> str:
    return f"""
    models:
      - {{name: local-embed, provider: local-embedding}}
      - {{name: echo-chat, provider: openai-compatible, model: echo, base_url: "{base}", hosting: local}}
    """


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def admin(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> AsyncIterator[AppClient]:
    runtime = make_runtime(tmp_path_factory.mktemp("rerank"), mesh_yaml(upstream.base_url))
    client = await AppClient.started(runtime)
    created = await client.http.post("/v1/banks", json={"name": "policies", "team": "people"})
    assert created.status_code == 201, created.text
    files = [("file", (name, text.encode(), "text/markdown")) for name, text in POLICIES.items()]
    uploaded = await client.http.post("/v1/banks/policies/documents", files=files, data={"acl": "public"})
    assert uploaded.status_code == 201, uploaded.text
    secret = await client.http.post(
        "/v1/banks/policies/documents",
        json={
            "text": SALARIES,
            "title": "Salary bands",
            "source": "hr/salaries.md",
            "format": "markdown",
            "acl": "team:hr",
        },
    )
    assert secret.status_code == 201, secret.text
    yield client
    await client.http.aclose()
    await runtime.stop()


async def key_for(admin: AppClient, team: str) -> dict[str, str]:
    assert admin.runtime.control is not None and admin.runtime.keys is not None
    created = await admin.runtime.control.create_key(team, role="developer")
    await admin.runtime.keys.reload()
    return {"authorization": f"Bearer {created.key}"}


async def search(admin: AppClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    response = await admin.http.post("/v1/banks/policies/search", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_search_reranks_on_request_and_keeps_the_fused_score(admin: AppClient) -> None:
    query = {"query": "how much are meal expenses reimbursed per day", "top_k": 3}
    reranked = await search(admin, {**query, "rerank": True})
    assert "60 euros" in reranked[0]["text"]
    assert all("rerank_score" in hit for hit in reranked)
    assert [h["rerank_score"] for h in reranked] == sorted((h["rerank_score"] for h in reranked), reverse=True)
    plain = {h["chunk_id"]: h["score"] for h in await search(admin, {**query, "top_k": 20})}
    assert all(h["score"] == plain[h["chunk_id"]] for h in reranked)
    assert len(await search(admin, {**query, "rerank": {"top_n": 2}})) == 3  # at least top_k are reranked


async def test_off_by_default_answers_as_before(admin: AppClient) -> None:
    query = {"query": "lunch at the canteen for guests", "top_k": 4}
    default = await search(admin, query)
    assert default == await search(admin, {**query, "rerank": False})
    assert all("rerank_score" not in hit for hit in default)
    # What search answered before reranking existed: the index's two lists, fused to top_k.
    service = admin.runtime.knowledge
    assert service is not None
    bank = await service.bank("policies")
    index = await service.index(bank.index_kind)
    vector = await service.embed_query(bank, query["query"])
    everyone = Readers.everyone()
    before = fuse(
        await index.keyword_search("policies", query["query"], everyone, KEYWORD_CANDIDATES),
        await index.vector_search("policies", vector, everyone, VECTOR_CANDIDATES),
        4,
    )
    read_all = await search(admin, {**query, "read_all": True})
    assert read_all == [hit.public() for hit in before]


async def test_reranking_never_shows_a_chunk_the_caller_may_not_read(admin: AppClient) -> None:
    outsider = await key_for(admin, "sales")
    insider = await key_for(admin, "hr")
    query = {"query": SALARY_QUERY, "top_k": 5, "rerank": {"top_n": 50}}
    seen_by_outsider = await search(admin, query, outsider)
    assert seen_by_outsider and all("95,000" not in hit["text"] for hit in seen_by_outsider)
    seen_by_insider = await search(admin, query, insider)
    assert "95,000" in seen_by_insider[0]["text"]


async def test_bad_rerank_values_are_client_errors(admin: AppClient) -> None:
    for value in ({"top_n": 0}, {"top_n": 51}, "yes", {"top": 3}):
        response = await admin.http.post("/v1/banks/policies/search", json={"query": "meals", "rerank": value})
        assert response.status_code == 400, (value, response.text)


async def test_server_default_turns_reranking_on_and_a_request_turns_it_off(admin: AppClient) -> None:
    service = admin.runtime.knowledge
    assert service is not None
    query = {"query": "when are lost badges reported", "top_k": 2}
    saved = service.config
    service.config = saved.model_copy(update={"rerank": RerankSettings(top_n=10)})
    try:
        assert all("rerank_score" in hit for hit in await search(admin, query))
        assert all("rerank_score" not in hit for hit in await search(admin, {**query, "rerank": False}))
    finally:
        service.config = saved


async def test_grounded_chat_takes_the_rerank_option(admin: AppClient, upstream: FakeOpenAI) -> None:
    response = await admin.http.post(
        "/v1/chat/completions",
        json={
            "model": "echo-chat",
            "messages": [{"role": "user", "content": "How much are meal expenses reimbursed per day?"}],
            "knowledge": {"banks": ["policies"], "top_k": 2, "rerank": {"top_n": 10}},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["abstained"] is False and body["citations"]
    assert "60 euros" in upstream.state.requests[-1].body["messages"][0]["content"]
    assert "knowledge" not in upstream.state.requests[-1].body


# -- the CLI -------------------------------------------------------------------------------------------


def test_cli_search_takes_rerank(tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text("models:\n  - {name: local-embed, provider: local-embedding}\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in POLICIES.items():
        (docs / name).write_text(text)
    common = ["--config", str(config), "--data-dir", str(tmp_path / "data")]

    def cli(*args: str) -> str:
        from meshgate.cli import cli as main

        result = CliRunner().invoke(main, ["banks", *args, *common])
        assert result.exit_code == 0, result.output
        return result.output

    cli("create", "policies")
    cli("ingest", "policies", str(docs))
    query = "how much are meal expenses reimbursed per day"
    reranked = json.loads(cli("search", "policies", query, "--rerank", "--json"))["data"]
    assert "60 euros" in reranked[0]["text"] and "rerank_score" in reranked[0]
    plain = json.loads(cli("search", "policies", query, "--json"))["data"]
    assert all("rerank_score" not in hit for hit in plain)
    assert "rerank" in cli("search", "policies", query, "--rerank-top-n", "5")
