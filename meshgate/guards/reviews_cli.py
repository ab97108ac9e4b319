"""`meshgate reviews list|show|approve|reject|label`: the guards' review queue from the command line.

Works on the server's own database (the same --data-dir / --database-url), as the keys CLI does;
decisions and labels go to the same audit log, with the actor `cli:<reviewer>` (`--as`, default
the login name). A running server serves an approved answer on the client's next fetch.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from meshgate.cli_options import settings_options
from meshgate.errors import ConfigError, MeshError
from meshgate.guards.reviews import STATUSES, SUGGESTED_LABELS, Review, ReviewStore
from meshgate.settings import ServerSettings

T = TypeVar("T")
Load = Callable[[str | None, dict[str, Any]], tuple[Any, ServerSettings]]

#: Where the CLI finds the server's data: the same data dir, database URL and mesh.yaml.
store_options = settings_options("data_dir", "database_url")

LIST_COLUMNS = ["id", "created", "status", "direction", "guard", "model", "team", "findings", "decided_by", "label"]


def run_with_reviews(
    load: Load, config_path: str | None, cli_values: dict[str, Any], work: Callable[[ReviewStore], Awaitable[T]]
) -> T:
    """Open the server's database (migrated), with its audit log, and run `work` on the queue."""
    from meshgate.observe.audit import AuditLog, Signer
    from meshgate.observe.audit_anchor import default_anchor
    from meshgate.store import connect, migrate
    from meshgate.store.sqlite import private_dir

    try:
        _, settings = load(config_path, cli_values)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None

    async def main() -> T:
        private_dir(settings.data_dir)
        db = await connect(settings.resolved_database_url)
        try:
            await migrate(db)
            audit = AuditLog(
                db, Signer.load(settings.data_dir), default_anchor(settings.data_dir, settings.audit_anchor)
            )
            return await work(ReviewStore(db, audit))
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except (MeshError, ConfigError) as error:
        raise click.ClickException(getattr(error, "message", str(error))) from None


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "findings":
        return ",".join(f"{f['detector']}/{f['kind']}:{f['count']}" for f in value) or "-"
    if isinstance(value, float) and value > 1e9:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(c, row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def describe(review: Review) -> str:
    """A reviewer's view of one item: its facts, then the held request and response."""
    facts = review.summary()
    lines = [f"{name}: {_cell(name, facts[name])}" for name in facts if name != "object"]
    lines.append("request:")
    lines.append(json.dumps(review.request, indent=2, ensure_ascii=False))
    lines.append("response:")
    lines.append(json.dumps(review.response, indent=2, ensure_ascii=False))
    return "\n".join(lines)


def _reviewer(name: str | None) -> str:
    if name:
        return "cli:" + name
    try:
        return "cli:" + getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return "cli"


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
as_option = click.option(
    "--as", "reviewer", default=None, help="Who decides (audited as cli:NAME; default: your login)."
)
note_option = click.option("--note", default=None, help="A note for the other reviewers (not audited).")
label_help = f"A short lowercase word for evaluation, e.g. {', '.join(SUGGESTED_LABELS)}."


def register(cli: click.Group, load: Load) -> None:
    @cli.group()
    def reviews() -> None:
        """The guards' human review queue: held calls and sampled flagged calls."""

    @reviews.command("list")
    @store_options
    @click.option("--status", type=click.Choice(STATUSES), default=None, help="Only items in this status.")
    @click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
    @click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
    @json_option
    def reviews_list(
        config_path: str | None, status: str | None, limit: int, offset: int, as_json: bool, **store: Any
    ) -> None:
        """List items without their content (the pending queue oldest first, else newest first)."""
        items = run_with_reviews(load, config_path, store, lambda s: s.list(status, limit=limit, offset=offset))
        rows = [r.summary() for r in items]
        click.echo(json.dumps(rows, indent=2) if as_json else table(rows, LIST_COLUMNS))

    @reviews.command("show")
    @store_options
    @click.argument("review_id")
    @json_option
    def reviews_show(config_path: str | None, review_id: str, as_json: bool, **store: Any) -> None:
        """Open one item, with the held request and response."""
        review = run_with_reviews(load, config_path, store, lambda s: s.get(review_id))
        click.echo(json.dumps(review.full(), indent=2, ensure_ascii=False) if as_json else describe(review))

    def decide_command(name: str, approve: bool, help_text: str) -> None:
        @reviews.command(name, help=help_text)
        @store_options
        @click.argument("review_id")
        @click.option("--label", default=None, help=label_help)
        @note_option
        @as_option
        @json_option
        def decide(
            config_path: str | None,
            review_id: str,
            label: str | None,
            note: str | None,
            reviewer: str | None,
            as_json: bool,
            **store: Any,
        ) -> None:
            who = _reviewer(reviewer)
            review = run_with_reviews(
                load, config_path, store, lambda s: s.decide(review_id, approve, who, label=label, note=note)
            )
            click.echo(json.dumps(review.summary(), indent=2) if as_json else f"{review.status} {review.id} ({who})")

    decide_command("approve", True, "Approve a pending item: its client can fetch the answer.")
    decide_command("reject", False, "Reject a pending item: its client never gets the answer.")

    @reviews.command("label")
    @store_options
    @click.argument("review_id")
    @click.option("--label", required=True, help=label_help)
    @note_option
    @as_option
    @json_option
    def reviews_label(
        config_path: str | None,
        review_id: str,
        label: str,
        note: str | None,
        reviewer: str | None,
        as_json: bool,
        **store: Any,
    ) -> None:
        """Label a sampled (or decided) item for evaluation."""
        who = _reviewer(reviewer)
        review = run_with_reviews(load, config_path, store, lambda s: s.label(review_id, label, who, note))
        click.echo(json.dumps(review.summary(), indent=2) if as_json else f"labelled {review.id} {label} ({who})")
