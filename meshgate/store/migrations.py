"""Named, append-only migration steps, recorded in `meshgate_migrations`.

Add a step by appending to MIGRATIONS; never edit or reorder a step that has shipped. A step's SQL
is one portable statement list, or a dict of lists per dialect. `migrate()` applies the missing
steps in order under a lock, so replicas starting together apply each step exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from meshgate.store.database import Database


@dataclass(frozen=True)
class Migration:
    name: str
    sql: tuple[str, ...] | dict[str, tuple[str, ...]]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.sql[dialect] if isinstance(self.sql, dict) else self.sql


MIGRATIONS: list[Migration] = [
    Migration(
        "0001_request_log",
        (
            """CREATE TABLE request_log (
                id TEXT PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                endpoint TEXT NOT NULL,
                model TEXT NOT NULL,
                status INTEGER NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                ttft_ms DOUBLE PRECISION,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                stream INTEGER NOT NULL,
                error_kind TEXT
            )""",
            "CREATE INDEX request_log_ts ON request_log (ts)",
        ),
    ),
    Migration(
        "0002_teams_and_keys",
        (
            """CREATE TABLE teams (
                name TEXT PRIMARY KEY,
                rpm INTEGER,
                tpm INTEGER,
                budget_usd DOUBLE PRECISION,
                budget_period TEXT,
                models TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                team TEXT NOT NULL REFERENCES teams (name),
                role TEXT NOT NULL,
                key_hash TEXT NOT NULL UNIQUE,
                hint TEXT NOT NULL,
                models TEXT NOT NULL,
                rpm INTEGER,
                tpm INTEGER,
                budget_usd DOUBLE PRECISION,
                budget_period TEXT,
                expires_at DOUBLE PRECISION,
                revoked_at DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            # A counter bumped by every change to keys and teams: servers poll this one row to
            # learn that they must reload, instead of reading keys per request.
            "CREATE TABLE meshgate_state (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO meshgate_state (name, value) VALUES ('control_version', 0)",
        ),
    ),
    Migration(
        "0003_usage",
        (
            """CREATE TABLE usage (
                id TEXT PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                endpoint TEXT NOT NULL,
                key_id TEXT,
                team TEXT,
                user_name TEXT,
                model TEXT NOT NULL,
                served_model TEXT NOT NULL,
                status INTEGER NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                cost_usd DOUBLE PRECISION NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                ttft_ms DOUBLE PRECISION,
                stream INTEGER NOT NULL,
                cache_hit INTEGER NOT NULL,
                error_kind TEXT
            )""",
            "CREATE INDEX usage_ts ON usage (ts)",
            "CREATE INDEX usage_team_ts ON usage (team, ts)",
            "CREATE INDEX usage_key_ts ON usage (key_id, ts)",
            # The usage table supersedes the request log of 0001 (a superset of its columns).
            "DROP TABLE request_log",
        ),
    ),
    Migration(
        "0004_audit",
        (
            """CREATE TABLE audit_log (
                seq BIGINT PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                event TEXT NOT NULL,
                actor TEXT NOT NULL,
                subject TEXT NOT NULL,
                detail TEXT NOT NULL,
                content TEXT,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            "CREATE INDEX audit_log_ts ON audit_log (ts)",
            """CREATE TABLE audit_checkpoints (
                seq BIGINT PRIMARY KEY,
                hash TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                signature TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        # Checkpoints chained to each other: the records they cover start at first_seq, and
        # prev_checkpoint is the digest of the checkpoint before (NULL on the unchained ones of 0004).
        "0005_audit_checkpoint_chain",
        (
            "ALTER TABLE audit_checkpoints ADD COLUMN first_seq BIGINT",
            "ALTER TABLE audit_checkpoints ADD COLUMN prev_checkpoint TEXT",
        ),
    ),
    Migration(
        "0006_usage_refused",
        (
            # Calls refused before going upstream (budget, rate limit, grants, capabilities) were
            # recorded at an estimated cost, which budgets rebuilt from usage counted as spent.
            "ALTER TABLE usage ADD COLUMN refused INTEGER NOT NULL DEFAULT 0",
            # Of the past rows, those refused for budget are known for sure (only the budget step
            # raises budget_exceeded): they cost nothing.
            "UPDATE usage SET refused = 1, cost_usd = 0, prompt_tokens = 0, completion_tokens = 0 "
            "WHERE error_kind = 'budget_exceeded'",
        ),
    ),
    Migration(
        "0007_routing_and_cache",
        (
            # Which deployment of a route served the call, how many were tried and why each failed over
            # (JSON list of {"deployment", "reason"}); how the cache answered and what a hit saved.
            "ALTER TABLE usage ADD COLUMN deployment TEXT",
            "ALTER TABLE usage ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE usage ADD COLUMN failovers TEXT",
            "ALTER TABLE usage ADD COLUMN cache TEXT",
            "ALTER TABLE usage ADD COLUMN cost_saved_usd DOUBLE PRECISION NOT NULL DEFAULT 0",
            # The data classification a key or team carries (public..restricted); NULL = the default.
            "ALTER TABLE teams ADD COLUMN data_class TEXT",
            "ALTER TABLE api_keys ADD COLUMN data_class TEXT",
        ),
    ),
    Migration(
        "0008_reviews",
        (
            # The human review queue of the guards (meshgate/guards/reviews.py): calls held for a
            # reviewer and flagged calls sampled for labelling. findings is a JSON list of
            # {"kind", "detector", "count"} (never values); request and response are JSON bodies.
            """CREATE TABLE reviews (
                id TEXT PRIMARY KEY,
                created DOUBLE PRECISION NOT NULL,
                status TEXT NOT NULL,
                direction TEXT NOT NULL,
                guard TEXT NOT NULL,
                model TEXT NOT NULL,
                key_id TEXT,
                team TEXT,
                request_id TEXT,
                findings TEXT NOT NULL,
                request TEXT,
                response TEXT,
                stream INTEGER NOT NULL,
                decided_by TEXT,
                decided_at DOUBLE PRECISION,
                label TEXT,
                note TEXT
            )""",
            "CREATE INDEX reviews_status_created ON reviews (status, created)",
            "CREATE INDEX reviews_created ON reviews (created)",
        ),
    ),
    Migration(
        "0009_usage_guards",
        (
            # What the guards found and did on each call: JSON of kinds, actions and counts.
            "ALTER TABLE usage ADD COLUMN guards TEXT",
        ),
    ),
    Migration(
        "0010_knowledge_banks",
        (
            # Knowledge banks (meshgate/knowledge/): the bank's owner team, embedder and index; its
            # documents with their hashes (incremental ingest, duplicates), ACL and data class. The
            # chunks themselves live in the bank's index (embedded SQLite file, Milvus, pgvector...).
            """CREATE TABLE banks (
                name TEXT PRIMARY KEY,
                team TEXT,
                embedder TEXT NOT NULL,
                index_kind TEXT NOT NULL,
                dimensions INTEGER NOT NULL,
                data_class TEXT NOT NULL,
                acl TEXT NOT NULL,
                description TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE bank_documents (
                id TEXT PRIMARY KEY,
                bank TEXT NOT NULL,
                source TEXT NOT NULL,
                title TEXT NOT NULL,
                format TEXT NOT NULL,
                content_hash TEXT NOT NULL,
                text_hash TEXT NOT NULL,
                minhash TEXT,
                duplicate_of TEXT,
                similarity DOUBLE PRECISION,
                acl TEXT NOT NULL,
                data_class TEXT NOT NULL,
                chunks INTEGER NOT NULL,
                tokens INTEGER NOT NULL,
                bytes INTEGER NOT NULL,
                pages INTEGER,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                UNIQUE (bank, source)
            )""",
            "CREATE INDEX bank_documents_content ON bank_documents (bank, content_hash)",
            "CREATE INDEX bank_documents_text ON bank_documents (bank, text_hash)",
            "CREATE INDEX bank_documents_duplicate ON bank_documents (duplicate_of)",
        ),
    ),
    Migration(
        "0011_audit_content_digest",
        (
            # Erasure (issue 15): the chain covers the sha256 of a record's content, not the content,
            # so erasing content keeps every hash (records written before keep their old canonical form).
            "ALTER TABLE audit_log ADD COLUMN content_sha256 TEXT",
        ),
    ),
    Migration(
        "0012_stored_responses",
        (
            # The Responses API's stored responses (store/responses.py): `previous_response_id`
            # across restarts and replicas. `body` is the JSON of the conversation and the response.
            """CREATE TABLE responses (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                body TEXT NOT NULL
            )""",
            "CREATE INDEX responses_expires ON responses (expires_at)",
            # Bumped by every erasure of a subject: processes drop what they hold in memory.
            "INSERT INTO meshgate_state (name, value) VALUES ('erasures', 0)",
        ),
    ),
]

_TABLE = "CREATE TABLE IF NOT EXISTS meshgate_migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"


async def migrate(db: Database, migrations: list[Migration] | None = None) -> list[str]:
    """Apply the steps not yet recorded; returns the names applied (empty when up to date)."""
    steps = MIGRATIONS if migrations is None else migrations
    applied: list[str] = []
    async with db.exclusive("migrations") as tx:
        await tx.execute(_TABLE)
        done = {row["name"] for row in await tx.fetchall("SELECT name FROM meshgate_migrations")}
        for step in steps:
            if step.name in done:
                continue
            for statement in step.statements(db.dialect):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO meshgate_migrations (name, applied_at) VALUES (?, ?)", (step.name, time.time())
            )
            applied.append(step.name)
    return applied
