"""`meshgate keys ...` and `meshgate teams ...`: the CLI works on the server's own database (the
same --data-dir / --database-url) and acts as admin. Running servers accept a new key on its very
first request and pick other changes (revocations, limits) up within ~1 s."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from meshgate.cli_options import settings_options
from meshgate.control.grants import ROLES
from meshgate.control.records import PERIODS, KeyRecord, Limits
from meshgate.control.service import ControlService
from meshgate.data_classes import DATA_CLASSES, DEFAULT_DATA_CLASS
from meshgate.errors import ConfigError, MeshError
from meshgate.observe.audit import AuditLog, Signer, export, verify
from meshgate.observe.audit_anchor import default_anchor
from meshgate.observe.usage_report import GROUPS, parse_since, usage_report
from meshgate.settings import ServerSettings

T = TypeVar("T")


#: Where the CLI finds the server's data: the same data dir, database URL and mesh.yaml.
store_options = settings_options("data_dir", "database_url")


class _Clear:
    """What `--rpm none` (and the other limits) parse to on `teams update`: clear the limit."""

    def __repr__(self) -> str:
        return "CLEAR"


CLEAR: Any = _Clear()


def _or_none(inner: Any) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback: `none` (any case) for CLEAR, else a value of the click type `inner`."""

    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value is CLEAR:
            return value
        if value.strip().lower() == "none":
            return CLEAR
        try:
            return inner.convert(value, param, ctx)
        except click.BadParameter as error:
            raise click.BadParameter(f"{error.message}, or none to clear it", ctx, param) from None

    return convert


def _limit_options(clearable: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--models, --rpm, --tpm, --budget and --budget-period; with `clearable`, each limit also takes
    `none` (for `teams update`)."""

    def limit(flag: str, dest: str, inner: Any, help: str, metavar: str) -> Callable[..., Any]:
        if not clearable:
            return click.option(flag, dest, type=inner, default=None, help=help)
        return click.option(
            flag,
            dest,
            default=None,
            callback=_or_none(inner),
            metavar=f"{metavar}|none",
            help=help + " `none` clears it.",
        )

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = limit("--budget-period", "budget_period", click.Choice(PERIODS), "Budget period.", "|".join(PERIODS))(
            func
        )
        func = limit("--budget", "budget_usd", click.FloatRange(min=0), "Budget in USD per period.", "USD")(func)
        func = limit("--tpm", "tpm", click.IntRange(min=1), "Tokens per minute.", "N")(func)
        func = limit("--rpm", "rpm", click.IntRange(min=1), "Requests per minute.", "N")(func)
        return click.option(
            "--models", default=None, help="Comma-separated model names or patterns it may use, or * for all."
        )(func)

    return decorate


#: Limits for `create`; `update` also takes `none` to clear one.
limit_options = _limit_options(clearable=False)
clearable_limit_options = _limit_options(clearable=True)

_DATA_CLASS_HELP = (
    "How sensitive its data is; a request's x-meshgate-data-class header may raise it, never lower it "
    f"(unset: the team's class, else {DEFAULT_DATA_CLASS})."
)

#: --data-class for `create`.
data_class_option = click.option(
    "--data-class",
    "data_class",
    type=click.Choice(DATA_CLASSES, case_sensitive=False),
    default=None,
    help=_DATA_CLASS_HELP,
)

#: --data-class for `update`: also `none`, which clears it.
clearable_data_class_option = click.option(
    "--data-class",
    "data_class",
    default=None,
    callback=_or_none(click.Choice(DATA_CLASSES, case_sensitive=False)),
    metavar=f"[{'|'.join(DATA_CLASSES)}|none]",
    help=_DATA_CLASS_HELP + " `none` clears it.",
)


def _models(text: str | None) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",")) if text else ()


def run_with_service(
    load: Callable[[str | None, dict[str, Any]], tuple[Any, ServerSettings]],
    config_path: str | None,
    cli_values: dict[str, Any],
    work: Callable[[ControlService], Awaitable[T]],
) -> T:
    from meshgate.store import connect, migrate
    from meshgate.store.sqlite import private_dir

    try:
        _, settings = load(config_path, cli_values)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None

    async def main() -> T:
        private_dir(settings.data_dir)  # 0700 when created; a warning if others may read it
        db = await connect(settings.resolved_database_url)
        try:
            await migrate(db)
            audit = AuditLog(
                db, Signer.load(settings.data_dir), default_anchor(settings.data_dir, settings.audit_anchor)
            )
            return await work(ControlService(db, audit, actor="cli"))
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except (MeshError, ConfigError) as error:
        raise click.ClickException(getattr(error, "message", str(error))) from None


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return ",".join(map(str, value))
        if isinstance(value, float) and value > 1e9:
            return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _parse_expiry(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO date (2027-01-31 or 2027-01-31T18:00:00+01:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _print_created(key: str, record: KeyRecord) -> None:
    click.echo(key)
    click.echo(
        f"# key {record.id} ({record.name}, team {record.team}, role {record.role}): "
        "store it now, it is not shown again",
        err=True,
    )


def register(cli: click.Group, load: Callable[[str | None, dict[str, Any]], tuple[Any, ServerSettings]]) -> None:
    @cli.group()
    def keys() -> None:
        """Create, list, revoke and rotate API keys."""

    @keys.command("create")
    @store_options
    @limit_options
    @data_class_option
    @click.option("--team", required=True, help="The key's team (created if it does not exist).")
    @click.option("--name", default=None, help="A unique name (default: TEAM-xxxx).")
    @click.option("--role", type=click.Choice(list(ROLES)), default="developer", show_default=True)
    @click.option("--expires", default=None, help="ISO date or time after which the key stops working.")
    def keys_create(
        config_path: str | None,
        team: str,
        name: str | None,
        role: str,
        models: str | None,
        rpm: int | None,
        tpm: int | None,
        budget_usd: float | None,
        budget_period: str | None,
        expires: str | None,
        data_class: str | None,
        **store: Any,
    ) -> None:
        """Create a key; prints it once on stdout."""
        expiry = _parse_expiry(expires)
        created = run_with_service(
            load,
            config_path,
            store,
            lambda s: s.create_key(
                team,
                name=name,
                role=role,
                models=_models(models),
                limits=Limits(rpm, tpm, budget_usd, budget_period),
                expires_at=expiry,
                data_class=data_class,
            ),
        )
        _print_created(created.key, created.record)

    @keys.command("list")
    @store_options
    @click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    def keys_list(config_path: str | None, include_revoked: bool, fmt: str, **store: Any) -> None:
        """List keys (never the keys themselves)."""
        records = run_with_service(load, config_path, store, lambda s: s.list_keys(include_revoked))
        rows = [r.public() for r in records]
        if fmt == "json":
            click.echo(json.dumps(rows, indent=2))
        else:
            click.echo(
                _table(
                    rows,
                    [
                        "id",
                        "name",
                        "team",
                        "role",
                        "models",
                        "rpm",
                        "tpm",
                        "budget_usd",
                        "budget_period",
                        "data_class",
                        "expires_at",
                        "revoked_at",
                        "hint",
                    ],
                )
            )

    @keys.command("revoke")
    @store_options
    @click.argument("key")
    def keys_revoke(config_path: str | None, key: str, **store: Any) -> None:
        """Revoke a key by id or name; it stops working within ~1 s on every server."""
        record = run_with_service(load, config_path, store, lambda s: s.revoke_key(key))
        click.echo(f"revoked {record.id} ({record.name})")

    @keys.command("rotate")
    @store_options
    @click.argument("key")
    def keys_rotate(config_path: str | None, key: str, **store: Any) -> None:
        """Give a key a new secret (same id, name and limits); prints it once. The old one stops working."""
        created = run_with_service(load, config_path, store, lambda s: s.rotate_key(key))
        _print_created(created.key, created.record)

    @cli.command("usage")
    @store_options
    @click.option("--since", default=None, help="7d, 24h, 30m or an ISO date (default: all time).")
    @click.option("--by", type=click.Choice(GROUPS), default="team", show_default=True)
    @click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
    def usage(config_path: str | None, since: str | None, by: str, fmt: str, **store: Any) -> None:
        """Requests, tokens and cost, grouped by team, key, model or day."""
        try:
            start = parse_since(since)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

        async def report(service: ControlService) -> list[dict[str, Any]]:
            return await usage_report(service.db, by, start)

        rows = run_with_service(load, config_path, store, report)
        columns = [
            by,
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "errors",
            "refused",
            "avg_latency_ms",
        ]
        if fmt == "json":
            click.echo(json.dumps(rows, indent=2))
        elif fmt == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            click.echo(out.getvalue().rstrip())
        else:
            click.echo(_table(rows, columns))

    @cli.group()
    def audit() -> None:
        """Verify and export the tamper-evident audit log."""

    @audit.command("verify")
    @store_options
    @click.option(
        "--anchor",
        "anchor_paths",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Another copy of the checkpoint anchor to compare with (JSON Lines; repeatable).",
    )
    def audit_verify(config_path: str | None, anchor_paths: tuple[str, ...], **store: Any) -> None:
        """Check the record chain, the signed checkpoint chain and the anchors; exit 1 at the first bad record."""
        from pathlib import Path

        from meshgate.observe.audit_anchor import Anchor, FileAnchor

        async def check(service: ControlService) -> Any:
            assert service.audit is not None
            anchors: list[Anchor] = [FileAnchor(Path(p)) for p in anchor_paths]
            if service.audit.anchor is not None:
                anchors.insert(0, service.audit.anchor)
            return await verify(service.db, service.audit.signer, anchors)

        verdict = run_with_service(load, config_path, store, check)
        for note in verdict.notes:
            click.echo(f"note: {note}", err=True)
        if verdict.ok:
            click.echo(f"ok: {verdict.checked} records, chain, signed checkpoints and anchors intact")
            return
        intact = min(verdict.checked, (verdict.bad_seq or 1) - 1)
        click.echo(
            f"TAMPERED at record {verdict.bad_seq}: {verdict.reason} ({intact} records before it are intact)",
            err=True,
        )
        raise SystemExit(1)

    @audit.command("export")
    @store_options
    @click.option("--since", default=None, help="7d, 24h, 30m or an ISO date (default: everything).")
    @click.option("--output", "-o", type=click.File("w"), default="-", help="File to write (default: stdout).")
    def audit_export(config_path: str | None, since: str | None, output: Any, **store: Any) -> None:
        """Write the audit log as JSON Lines, one record per line."""
        try:
            start = parse_since(since)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

        async def dump(service: ControlService) -> int:
            count = 0
            async for record in export(service.db, start):
                output.write(json.dumps(record, sort_keys=True) + "\n")
                count += 1
            return count

        count = run_with_service(load, config_path, store, dump)
        click.echo(f"# exported {count} records", err=True)

    @cli.group()
    def teams() -> None:
        """Create, update and list teams, with their limits and budgets."""

    @teams.command("create")
    @store_options
    @limit_options
    @data_class_option
    @click.argument("name")
    def teams_create(
        config_path: str | None,
        name: str,
        models: str | None,
        rpm: int | None,
        tpm: int | None,
        budget_usd: float | None,
        budget_period: str | None,
        data_class: str | None,
        **store: Any,
    ) -> None:
        """Create a team."""
        team = run_with_service(
            load,
            config_path,
            store,
            lambda s: s.create_team(
                name, Limits(rpm, tpm, budget_usd, budget_period), _models(models), data_class=data_class
            ),
        )
        click.echo(f"created team {team.name}")

    @teams.command("update")
    @store_options
    @clearable_limit_options
    @clearable_data_class_option
    @click.argument("name")
    def teams_update(
        config_path: str | None,
        name: str,
        models: str | None,
        rpm: int | None,
        tpm: int | None,
        budget_usd: float | None,
        budget_period: str | None,
        data_class: str | None,
        **store: Any,
    ) -> None:
        """Change a team's limits, models or data class (only the options given); `--rpm none` clears a
        limit, `--data-class none` the class."""
        given = {
            "rpm": rpm,
            "tpm": tpm,
            "budget_usd": budget_usd,
            "budget_period": budget_period,
            "data_class": data_class,
        }
        changes: dict[str, Any] = {k: None if v is CLEAR else v for k, v in given.items() if v is not None}
        if models is not None:
            changes["models"] = _models(models)
        team = run_with_service(load, config_path, store, lambda s: s.update_team(name, changes))
        click.echo(_table([team.public()], TEAM_COLUMNS))

    @teams.command("list")
    @store_options
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    def teams_list(config_path: str | None, fmt: str, **store: Any) -> None:
        """List teams."""
        rows = [t.public() for t in run_with_service(load, config_path, store, lambda s: s.list_teams())]
        click.echo(json.dumps(rows, indent=2) if fmt == "json" else _table(rows, TEAM_COLUMNS))


TEAM_COLUMNS = ["name", "models", "rpm", "tpm", "budget_usd", "budget_period", "data_class", "created_at"]
