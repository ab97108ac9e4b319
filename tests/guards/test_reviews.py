"""The guards' review queue: the store on SQLite and PostgreSQL, the client and admin APIs through the
app with real keys, and the `meshgate reviews` CLI."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.errors import InvalidRequest
from meshgate.guards.findings import Finding
from meshgate.guards.reviews import Review, ReviewConflict, ReviewNotFound, ReviewStore
from meshgate.observe.audit import AuditLog, Signer, verify
from meshgate.store import Database, connect, migrate
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime, upstream_models_yaml
from tests.store.test_database_contract import _drop_schema as drop_schema
from tests.store.test_database_contract import _pg_url as pg_url

SECRET_PROMPT = "my password is hunter2-do-not-log"
REQUEST = {"model": "bench", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
COMPLETION = {
    "id": "chatcmpl-held",
    "object": "chat.completion",
    "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "the held answer"}, "finish_reason": "stop"}],
}
FINDINGS = [
    Finding("email", 3, 10, 0.9, "pii"),
    Finding("email", 20, 30, 0.8, "pii"),
    Finding("aws_access_key", 40, 60, 1.0, "secrets"),
]


# -- the store, on both backends -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'reviews.db'}"
    else:
        url, schema = await pg_url()
    database = await connect(url)
    await migrate(database)
    yield database
    await database.close()
    if schema is not None:
        await drop_schema(schema)


@pytest.fixture()
def audit(db: Database) -> AuditLog:
    return AuditLog(db, Signer(b"test-secret"), anchor=None)


@pytest.fixture()
def store(db: Database, audit: AuditLog) -> ReviewStore:
    return ReviewStore(db, audit)


async def held(store: ReviewStore, direction: str = "output", **changes: Any) -> Review:
    values: dict[str, Any] = dict(
        direction=direction,
        guard="no-secrets",
        model="bench",
        findings=FINDINGS,
        request=REQUEST,
        response=COMPLETION if direction == "output" else None,
        key_id="key_a",
        team="t1",
        request_id="req_1",
    )
    values.update(changes)
    return await store.submit(**values)


async def audit_rows(db: Database, prefix: str = "review.") -> list[dict[str, Any]]:
    rows = await db.fetchall("SELECT * FROM audit_log ORDER BY seq")
    return [r for r in rows if str(r["event"]).startswith(prefix)]


async def test_submit_keeps_counts_of_findings_never_values_and_reads_back(store: ReviewStore) -> None:
    review = await held(store, stream=True)
    assert re.fullmatch(r"rev_[A-Za-z0-9_-]{24}", review.id)
    assert review.status == "pending"
    assert review.findings == [
        {"kind": "aws_access_key", "detector": "secrets", "count": 1},
        {"kind": "email", "detector": "pii", "count": 2},
    ]
    again = await store.get(review.id)
    assert again == review
    assert again.request == REQUEST and again.response == COMPLETION and again.stream is True
    with pytest.raises(ReviewNotFound):
        await store.get("rev_nope")


async def test_list_filters_orders_and_counts(store: ReviewStore) -> None:
    first = await held(store)
    second = await held(store, direction="input")
    sample = await held(store, status="sampled")
    await store.decide(second.id, True, "rev1")
    assert [r.id for r in await store.list("pending")] == [first.id]
    assert [r.id for r in await store.list("sampled")] == [sample.id]
    assert {r.id for r in await store.list()} == {first.id, second.id, sample.id}
    assert len(await store.list(limit=1)) == 1 and len(await store.list(limit=2, offset=2)) == 1
    assert await store.counts() == {"pending": 1, "approved": 1, "rejected": 0, "sampled": 1}
    with pytest.raises(InvalidRequest):
        await store.list("bogus")


async def test_a_decision_is_made_once(store: ReviewStore) -> None:
    review = await held(store)
    decided = await store.decide(review.id, False, "rev1", label="harmful", note="leaks a key")
    assert (decided.status, decided.decided_by, decided.label, decided.note) == (
        "rejected",
        "rev1",
        "harmful",
        "leaks a key",
    )
    assert decided.decided_at is not None
    with pytest.raises(ReviewConflict, match="already rejected by rev1"):
        await store.decide(review.id, True, "rev2")
    assert (await store.get(review.id)).status == "rejected"
    with pytest.raises(ReviewNotFound):
        await store.decide("rev_missing", True, "rev1")


async def test_racing_decisions_one_wins(store: ReviewStore) -> None:
    review = await held(store)
    outcomes = await asyncio.gather(
        *(store.decide(review.id, i % 2 == 0, f"rev{i}") for i in range(6)), return_exceptions=True
    )
    wins = [o for o in outcomes if isinstance(o, Review)]
    assert len(wins) == 1
    assert all(isinstance(o, ReviewConflict) for o in outcomes if not isinstance(o, Review))
    assert (await store.get(review.id)).decided_by == wins[0].decided_by


async def test_samples_take_a_label_not_a_decision(store: ReviewStore) -> None:
    sample = await held(store, status="sampled")
    assert sample.status == "sampled"
    with pytest.raises(ReviewConflict, match="label"):
        await store.decide(sample.id, True, "rev1")
    labelled = await store.label(sample.id, "leak", "rev1")
    assert (labelled.status, labelled.label, labelled.decided_by) == ("sampled", "leak", "rev1")
    relabelled = await store.label(sample.id, "correct", "rev2", note="was fine")
    assert (relabelled.label, relabelled.note) == ("correct", "was fine")
    pending = await held(store)
    with pytest.raises(ReviewConflict, match="pending"):
        await store.label(pending.id, "leak", "rev1")
    for bad in ("Leak", "two words", "x" * 41, ""):
        with pytest.raises(InvalidRequest):
            await store.label(sample.id, bad, "rev1")


async def test_first_response_stored_wins(store: ReviewStore) -> None:
    review = await held(store, direction="input")
    assert review.response is None
    first = await store.set_response(review.id, {"n": 1})
    second = await store.set_response(review.id, {"n": 2})
    assert first.response == second.response == {"n": 1}


async def test_racing_releases_run_the_call_once(store: ReviewStore) -> None:
    review = await held(store, direction="input")
    calls: list[str] = []

    async def release(item: Review) -> dict[str, Any]:
        calls.append(item.id)
        await asyncio.sleep(0.05)
        return {**COMPLETION, "id": f"chatcmpl-{len(calls)}"}

    assert (await store.release(review.id, release)).response is None  # pending: nothing runs
    await store.decide(review.id, True, "rev1")
    results = await asyncio.gather(*(store.release(review.id, release) for _ in range(5)))
    assert calls == [review.id]
    assert {r.response["id"] for r in results if r.response} == {"chatcmpl-1"}
    assert (await store.release(review.id, release)).response["id"] == "chatcmpl-1"  # type: ignore[index]
    assert calls == [review.id]


async def test_decisions_are_audited_without_content(store: ReviewStore, db: Database, audit: AuditLog) -> None:
    review = await held(store)
    await store.decide(review.id, True, "key_reviewer", label="correct", note=SECRET_PROMPT)
    sample = await held(store, status="sampled")
    await store.label(sample.id, "leak", "key_reviewer")
    rows = await audit_rows(db)
    assert [r["event"] for r in rows] == ["review.queued", "review.approved", "review.sampled", "review.labelled"]
    approved = rows[1]
    assert approved["actor"] == "key_reviewer" and approved["subject"] == review.id
    detail = json.loads(approved["detail"])
    assert (detail["reviewer"], detail["guard"], detail["review_id"], detail["noted"]) == (
        "key_reviewer",
        "no-secrets",
        review.id,
        True,
    )
    for row in rows:
        assert SECRET_PROMPT not in row["detail"] and "held answer" not in row["detail"]
        assert row["content"] is None
    assert (await verify(db, audit.signer)).ok


# -- the APIs, through the app with real keys --------------------------------------------------------


class Mesh:
    def __init__(self, client: AppClient, keys: dict[str, str], ids: dict[str, str]) -> None:
        self.client = client
        self.keys = keys  # role or name -> secret
        self.ids = ids  # role or name -> key id

    @property
    def store(self) -> ReviewStore:
        store = self.client.runtime.reviews  # type: ignore[attr-defined]
        assert isinstance(store, ReviewStore)
        return store

    async def get(self, who: str, path: str) -> httpx.Response:
        return await self.client.http.get(path, headers={"authorization": f"Bearer {self.keys[who]}"})

    async def post(self, who: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.keys[who]}"}
        if body is None:
            return await self.client.http.post(path, headers=headers)
        return await self.client.http.post(path, json=body, headers=headers)

    async def submit(self, owner: str = "alice", direction: str = "output", **changes: Any) -> Review:
        return await held(self.store, direction, key_id=self.ids[owner], **changes)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI) -> AsyncIterator[Mesh]:
    runtime = make_runtime(tmp_path_factory.mktemp("reviews"), upstream_models_yaml(fake_upstream.base_url))
    client = await AppClient.started(runtime)
    assert runtime.db is not None and runtime.control is not None and runtime.keys is not None
    if not isinstance(getattr(runtime, "reviews", None), ReviewStore):
        runtime.reviews = ReviewStore(runtime.db, runtime.audit)  # type: ignore[attr-defined]
    keys: dict[str, str] = {"admin": client.key or ""}
    ids: dict[str, str] = {}
    for name, role in (("alice", "developer"), ("bob", "developer"), ("carol", "reviewer")):
        created = await runtime.control.create_key("t1", name=name, role=role)
        keys[name], ids[name] = created.key, created.record.id
    await runtime.keys.reload()
    yield Mesh(client, keys, ids)
    await client.http.aclose()
    await runtime.stop()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


async def test_client_fetches_only_its_own_item(mesh: Mesh) -> None:
    review = await mesh.submit("alice")
    own = await mesh.get("alice", f"/v1/reviews/{review.id}")
    assert own.status_code == 200
    assert own.json() | {"message": None} == {
        "object": "review",
        "review_id": review.id,
        "status": "pending",
        "response": None,
        "message": None,
    }
    other = await mesh.get("bob", f"/v1/reviews/{review.id}")
    unknown = await mesh.get("bob", "/v1/reviews/rev_doesnotexist")
    assert error_of(other, 404)["message"].replace(review.id, "X") == error_of(unknown, 404)["message"].replace(
        "rev_doesnotexist", "X"
    )
    assert (await mesh.get("carol", f"/v1/reviews/{review.id}")).status_code == 200  # reviewers see every item
    assert (await mesh.get("admin", f"/v1/reviews/{review.id}")).status_code == 200


async def test_reviewer_lists_opens_and_approves_developer_cannot(mesh: Mesh) -> None:
    review = await mesh.submit("alice")
    for path in ("/admin/reviews", f"/admin/reviews/{review.id}"):
        assert error_of(await mesh.get("alice", path), 403)["code"] == "permission_denied"
    assert error_of(await mesh.post("alice", f"/admin/reviews/{review.id}/approve"), 403)["code"] == "permission_denied"

    listed = await mesh.get("carol", "/admin/reviews?status=pending&limit=500")
    assert listed.status_code == 200
    item = next(i for i in listed.json()["data"] if i["id"] == review.id)
    assert "request" not in item and "response" not in item  # a list never carries content
    assert listed.json()["counts"]["pending"] >= 1
    opened = (await mesh.get("carol", f"/admin/reviews/{review.id}")).json()
    assert opened["request"] == REQUEST and opened["response"] == COMPLETION

    approved = await mesh.post("carol", f"/admin/reviews/{review.id}/approve", {"label": "correct", "note": "ok"})
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["decided_by"]) == ("approved", mesh.ids["carol"])
    fetched = (await mesh.get("alice", f"/v1/reviews/{review.id}")).json()
    assert fetched["status"] == "approved" and fetched["response"] == COMPLETION

    again = await mesh.post("carol", f"/admin/reviews/{review.id}/reject")
    assert error_of(again, 409)["code"] == "review_already_decided"
    assert error_of(await mesh.post("carol", "/admin/reviews/rev_missing/approve"), 404)["code"] == "review_not_found"
    assert error_of(await mesh.get("carol", "/admin/reviews?status=nope"), 400)["param"] == "status"
    bad_body = await mesh.post("carol", f"/admin/reviews/{(await mesh.submit()).id}/approve", {"labels": "x"})
    assert error_of(bad_body, 400)["code"] == "unknown_parameter"


async def test_rejected_item_never_releases(mesh: Mesh) -> None:
    review = await mesh.submit("alice")
    assert (await mesh.post("admin", f"/admin/reviews/{review.id}/reject", {"label": "harmful"})).status_code == 200
    fetched = (await mesh.get("alice", f"/v1/reviews/{review.id}")).json()
    assert (fetched["status"], fetched["response"]) == ("rejected", None)


async def test_input_held_call_is_released_once_on_fetch(mesh: Mesh) -> None:
    review = await mesh.submit("alice", direction="input", stream=True)
    assert (await mesh.post("carol", f"/admin/reviews/{review.id}/approve")).status_code == 200
    app = mesh.client.app
    app.state.review_release = None
    unavailable = (await mesh.get("alice", f"/v1/reviews/{review.id}")).json()
    assert unavailable["status"] == "approved" and unavailable["response"] is None and unavailable["message"]

    runs: list[Review] = []

    async def release(item: Review) -> dict[str, Any]:
        runs.append(item)
        await asyncio.sleep(0.05)
        return {**COMPLETION, "id": "chatcmpl-released"}

    app.state.review_release = release
    try:
        fetches = await asyncio.gather(*(mesh.get("alice", f"/v1/reviews/{review.id}") for _ in range(4)))
    finally:
        app.state.review_release = None
    assert [r.status_code for r in fetches] == [200] * 4
    assert {r.json()["response"]["id"] for r in fetches} == {"chatcmpl-released"}
    assert len(runs) == 1 and runs[0].request == REQUEST and runs[0].stream is True
    # Released and stored: later fetches need no release function.
    assert (await mesh.get("alice", f"/v1/reviews/{review.id}")).json()["response"]["id"] == "chatcmpl-released"


async def test_samples_are_labelled_and_hidden_from_clients(mesh: Mesh) -> None:
    sample = await mesh.submit("alice", status="sampled")
    assert (await mesh.get("alice", f"/v1/reviews/{sample.id}")).status_code == 404
    assert error_of(await mesh.post("carol", f"/admin/reviews/{sample.id}/approve"), 409)["code"] == "review_conflict"
    assert error_of(await mesh.post("carol", f"/admin/reviews/{sample.id}/label"), 400)["param"] == "label"
    assert error_of(await mesh.post("carol", f"/admin/reviews/{sample.id}/label", {"label": "NO!"}), 400)["param"] == (
        "label"
    )
    labelled = await mesh.post("carol", f"/admin/reviews/{sample.id}/label", {"label": "leak"})
    assert labelled.status_code == 200 and labelled.json()["label"] == "leak"


async def test_api_decisions_are_audited_as_the_reviewer_key(mesh: Mesh) -> None:
    review = await mesh.submit("alice")
    await mesh.post("carol", f"/admin/reviews/{review.id}/reject", {"note": SECRET_PROMPT})
    db = mesh.client.runtime.db
    assert db is not None
    rows = [r for r in await audit_rows(db, "review.rejected") if r["subject"] == review.id]
    assert len(rows) == 1 and rows[0]["actor"] == mesh.ids["carol"]
    assert json.loads(rows[0]["detail"])["guard"] == "no-secrets"
    assert SECRET_PROMPT not in rows[0]["detail"]


async def test_a_reviewer_key_calls_no_model(mesh: Mesh) -> None:
    response = await mesh.post("carol", "/v1/chat/completions", {"model": "bench", "messages": REQUEST["messages"]})
    assert error_of(response, 403)["code"] == "permission_denied"


# -- the CLI -----------------------------------------------------------------------------------------


def test_cli_lists_shows_decides_and_labels(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    async def fill() -> tuple[str, str]:
        database = await connect(f"sqlite:///{data_dir / 'meshgate.db'}")
        try:
            await migrate(database)
            store = ReviewStore(database)
            return (await held(store)).id, (await held(store, status="sampled")).id
        finally:
            await database.close()

    runner = CliRunner()
    where = ["--data-dir", str(data_dir)]

    def run(*args: str) -> Any:
        return runner.invoke(cli, ["reviews", *args, *where])

    # The CLI finds the server's database the way the keys CLI does.
    probe = run("list")
    assert probe.exit_code == 0, probe.output
    pending_id, sample_id = asyncio.run(fill())

    listed = run("list", "--status", "pending")
    assert listed.exit_code == 0, listed.output
    assert pending_id in listed.output and sample_id not in listed.output and "pii/email" in listed.output
    assert SECRET_PROMPT not in listed.output
    shown = run("show", pending_id, "--json")
    assert shown.exit_code == 0 and json.loads(shown.output)["request"] == REQUEST

    approved = run("approve", pending_id, "--as", "alice", "--label", "correct")
    assert approved.exit_code == 0, approved.output
    assert approved.output.strip() == f"approved {pending_id} (cli:alice)"
    twice = run("reject", pending_id, "--as", "bob")
    assert twice.exit_code == 1 and "already approved by cli:alice" in twice.output
    assert run("approve", "rev_missing").exit_code == 1

    labelled = run("label", sample_id, "--label", "leak", "--json", "--as", "alice")
    assert labelled.exit_code == 0 and json.loads(labelled.output)["label"] == "leak"
    rows = json.loads(run("list", "--json").output)
    assert {r["id"]: r["status"] for r in rows} == {pending_id: "approved", sample_id: "sampled"}

    async def events() -> list[tuple[str, str]]:
        database = await connect(f"sqlite:///{data_dir / 'meshgate.db'}")
        try:
            return [(r["event"], r["actor"]) for r in await audit_rows(database)]
        finally:
            await database.close()

    assert asyncio.run(events()) == [("review.approved", "cli:alice"), ("review.labelled", "cli:alice")]
