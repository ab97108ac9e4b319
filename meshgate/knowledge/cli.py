"""`meshgate banks ...`: knowledge banks from the command line. The CLI works on the server's own
data (the same --data-dir / --database-url and mesh.yaml) and acts as admin; a running server sees
a new bank and newly ingested documents within a second."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from meshgate.cli_options import settings_options
from meshgate.data_classes import DATA_CLASSES, DEFAULT_DATA_CLASS
from meshgate.errors import ConfigError, MeshError
from meshgate.knowledge.acl import AclError, parse_acl
from meshgate.knowledge.index.base import Readers
from meshgate.knowledge.ingest import IngestItem, IngestReport, Progress
from meshgate.knowledge.parsing import FORMATS
from meshgate.knowledge.records import DEFAULT_EMBEDDER, DEFAULT_INDEX
from meshgate.knowledge.service import KnowledgeService
from meshgate.settings import ServerSettings

T = TypeVar("T")
Load = Callable[[str | None, dict[str, Any]], tuple[Any, ServerSettings]]

store_options = settings_options("data_dir", "database_url")


def run_with_knowledge(
    load: Load,
    provider_types: Callable[[], dict[str, Any]],
    config_path: str | None,
    cli_values: dict[str, Any],
    work: Callable[[KnowledgeService], Awaitable[T]],
    embeds: bool = False,
) -> T:
    """Open the database and a KnowledgeService on the server's config; with `embeds`, the banks'
    embedders (and the default one) are loaded first (ingest and search need them)."""
    from meshgate.observe.audit import AuditLog, Signer
    from meshgate.observe.audit_anchor import default_anchor
    from meshgate.providers.base import Model, ProviderContext
    from meshgate.routing.config import RouteConfig
    from meshgate.store import connect, migrate
    from meshgate.store.sqlite import private_dir

    try:
        config, settings = load(config_path, cli_values)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    types = provider_types()
    context = ProviderContext(data_dir=settings.data_dir, model_cache=settings.resolved_model_cache)
    started: dict[str, Model] = {}

    async def main() -> T:
        private_dir(settings.data_dir)
        db = await connect(settings.resolved_database_url)
        built: dict[str, Model] = {}

        def lookup(name: str) -> Model | None:
            if name in built:
                return built[name]
            for entry in config.models:
                if entry.name == name and not isinstance(entry, RouteConfig):
                    built[name] = types[entry.provider].factory(entry, context)
                    return built[name]
            return None

        try:
            await migrate(db)
            audit = AuditLog(
                db, Signer.load(settings.data_dir), default_anchor(settings.data_dir, settings.audit_anchor)
            )

            service = KnowledgeService(db, config.knowledge, settings.data_dir, lookup, audit.record)
            # The embedders of the banks (and the default) load once; creating a bank with another
            # embedder only reads its profile.
            names = {b.embedder for b in await service.records.banks()} | {DEFAULT_EMBEDDER} if embeds else set()
            for name in names:
                model = lookup(name)
                if model is not None:
                    await model.start()
                    started[name] = model
            try:
                return await work(service)
            finally:
                await service.close()
                for model in started.values():
                    await model.close()
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except (MeshError, ConfigError) as error:
        raise click.ClickException(getattr(error, "message", str(error))) from None


def _acl(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    try:
        return parse_acl(text)
    except AclError as exc:
        raise click.BadParameter(str(exc), param_hint="--acl") from None


def _files(paths: tuple[str, ...]) -> Iterator[Path]:
    """The files under `paths` whose format meshgate reads, in a stable order (hidden files skipped)."""
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                relative = found.relative_to(path)
                hidden = any(part.startswith(".") for part in relative.parts)
                if found.is_file() and not hidden and found.suffix.lower() in FORMATS:
                    yield found.resolve()
        elif path.exists():
            yield path.resolve()
        else:
            raise click.BadParameter(f"{raw}: no such file or directory", param_hint="PATH")


def _read(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


class ProgressLine:
    """One line on stderr: files, chunks, tokens, rate and ETA; redrawn in place on a terminal,
    printed every few seconds otherwise (CI logs)."""

    def __init__(self, stream: Any = None, every: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self._last = 0.0
        self._shown = False

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        done = progress.files_done >= progress.files_total
        if not done and now - self._last < (0.1 if self.tty else self.every):
            return
        self._last = now
        elapsed = progress.elapsed
        rate = progress.chunks / elapsed if elapsed > 0 else 0.0
        per_file = elapsed / progress.files_done if progress.files_done else 0.0
        eta = per_file * (progress.files_total - progress.files_done)
        width = 24
        filled = int(width * progress.files_done / max(progress.files_total, 1))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {progress.files_done}/{progress.files_total} files, "
            f"{progress.chunks:,} chunks, {progress.tokens:,} tokens, {rate:,.1f} chunks/s, "
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            if done:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = True


def print_report(report: IngestReport, as_json: bool) -> None:
    summary = report.summary()
    if as_json:
        click.echo(json.dumps({**summary, "documents": [o.public() for o in report.outcomes]}, indent=2))
        return
    click.echo(
        f"{summary['added']} added, {summary['updated']} updated, {summary['unchanged']} unchanged, "
        f"{summary['duplicates']} duplicates, {summary['removed']} removed, {summary['failed']} failed; "
        f"{summary['chunks']:,} chunks, {summary['tokens']:,} tokens in {summary['seconds']:.1f} s "
        f"({summary['documents_per_second']} documents/s, {summary['chunks_per_second']} chunks/s)"
    )
    for outcome in report.outcomes:
        if outcome.status == "duplicate":
            click.echo(
                f"  duplicate {outcome.source}: stored once, as {outcome.duplicate_of} "
                f"(similarity {outcome.similarity})"
            )
    for failure in summary["failures"]:
        click.echo(f"  failed {failure['source']}: {failure['reason']}", err=True)


def register(cli: click.Group, load: Load, provider_types: Callable[[], dict[str, Any]]) -> None:
    """`meshgate banks ...` and `meshgate erase`."""

    def run(
        config_path: str | None,
        cli_values: dict[str, Any],
        work: Callable[[KnowledgeService], Awaitable[T]],
        embeds: bool = False,
    ) -> T:
        return run_with_knowledge(load, provider_types, config_path, cli_values, work, embeds)

    @cli.group()
    def banks() -> None:
        """Knowledge banks: create, ingest documents, search."""

    @banks.command("create")
    @store_options
    @click.argument("name")
    @click.option("--team", default=None, help="The owner team: its developer keys manage the bank.")
    @click.option("--embedder", default=DEFAULT_EMBEDDER, show_default=True, help="An embedding model of the mesh.")
    @click.option(
        "--index",
        "index_kind",
        type=click.Choice(["embedded", "milvus", "pgvector", "pinecone"]),
        default=DEFAULT_INDEX,
        show_default=True,
        help="Where the chunks live (milvus, pgvector and pinecone take options from mesh.yaml's knowledge.indexes).",
    )
    @click.option(
        "--data-class",
        type=click.Choice(DATA_CLASSES),
        default=DEFAULT_DATA_CLASS,
        show_default=True,
        help="The least class of every document (detectors may raise a document's).",
    )
    @click.option("--acl", default="public", show_default=True, help="ACL of documents ingested without --acl.")
    @click.option("--description", default="", help="What the bank holds.")
    def create(
        config_path: str | None,
        name: str,
        team: str | None,
        embedder: str,
        index_kind: str,
        data_class: str,
        acl: str,
        description: str,
        **cli_values: Any,
    ) -> None:
        """Create a knowledge bank."""
        acl_tokens = _acl(acl) or ("public",)

        async def work(service: KnowledgeService) -> Any:
            return await service.create_bank(
                name,
                team=team,
                embedder=embedder,
                index_kind=index_kind,
                data_class=data_class,
                acl=acl_tokens,
                description=description,
            )

        bank = run(config_path, cli_values, work)
        click.echo(json.dumps(bank.public(), indent=2))

    @banks.command("list")
    @store_options
    def list_banks(config_path: str | None, **cli_values: Any) -> None:
        """List the banks with their document and chunk counts."""

        async def work(service: KnowledgeService) -> list[dict[str, Any]]:
            rows = []
            for bank in await service.banks():
                documents = await service.records.documents(bank.name)
                rows.append(
                    {
                        **bank.public(),
                        "documents": len(documents),
                        "chunks": sum(d.chunks for d in documents),
                    }
                )
            return rows

        rows = run(config_path, cli_values, work)
        if not rows:
            click.echo("no banks (create one: meshgate banks create NAME)")
        for row in rows:
            click.echo(
                f"{row['name']}\tteam={row['team'] or '-'}\tindex={row['index']}\tembedder={row['embedder']}\t"
                f"class={row['data_class']}\tdocuments={row['documents']}\tchunks={row['chunks']}"
            )

    @banks.command("ingest")
    @store_options
    @click.argument("name")
    @click.argument("paths", nargs=-1, required=True)
    @click.option("--acl", default=None, help="Who may read: public, or team:x,user:y,group:z (default: the bank's).")
    @click.option("--sync", is_flag=True, help="Also remove documents whose files are gone from PATHs.")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    def ingest(
        config_path: str | None,
        name: str,
        paths: tuple[str, ...],
        acl: str | None,
        sync: bool,
        as_json: bool,
        **cli_values: Any,
    ) -> None:
        """Ingest files and folders (PDF, DOCX, HTML, Markdown, text, CSV) into a bank, incrementally."""
        acl_tokens = _acl(acl)
        files = list(_files(paths))
        items = [IngestItem(source=str(path), filename=path.name, read=_read(path)) for path in files]

        async def work(service: KnowledgeService) -> IngestReport:
            return await service.ingest(name, items, acl_tokens, sync=sync, on_progress=ProgressLine())

        report = run(config_path, cli_values, work, embeds=True)
        print_report(report, as_json)
        if report.count("failed"):
            sys.exit(1)

    @banks.command("search")
    @store_options
    @click.argument("name")
    @click.argument("query")
    @click.option("--top-k", type=click.IntRange(1, 50), default=5, show_default=True)
    @click.option(
        "--as",
        "readers",
        default=None,
        help="Read as these principals (team:x,user:y,group:z); default: every document (admin, audited).",
    )
    @click.option(
        "--rerank/--no-rerank",
        default=None,
        help="Reorder the top fused chunks with the reranker (default: mesh.yaml knowledge.rerank).",
    )
    @click.option("--rerank-top-n", type=click.IntRange(1, 50), default=None, help="Candidates to rerank (20).")
    @click.option("--json", "as_json", is_flag=True)
    def search(
        config_path: str | None,
        name: str,
        query: str,
        top_k: int,
        readers: str | None,
        rerank: bool | None,
        rerank_top_n: int | None,
        as_json: bool,
        **cli_values: Any,
    ) -> None:
        """Search a bank (hybrid: BM25 and vectors) and print the chunks found."""
        tokens = _acl(readers)
        option: Any = rerank
        if rerank_top_n is not None and rerank is not False:
            option = {"top_n": rerank_top_n}

        async def work(service: KnowledgeService) -> Any:
            who = Readers(frozenset(tokens)) if tokens else Readers.everyone()
            if tokens is None:
                await service.audit_read_all(name, "cli", len(query))
            return await service.retrieve(name, query, who, top_k, rerank=option)

        retrieved = run(config_path, cli_values, work, embeds=True)
        hits, reranked = retrieved.hits, retrieved.rerank_scores
        if as_json:
            data = [
                {**hit.public(), "rerank_score": reranked[hit.chunk.chunk_id]} if reranked else hit.public()
                for hit in hits
            ]
            click.echo(json.dumps({"data": data}, indent=2))
            return
        if not hits:
            click.echo("nothing found")
        for rank, hit in enumerate(hits, 1):
            chunk = hit.chunk
            where = f"p. {chunk.page}" if chunk.page else (chunk.section or "")
            scores = f"{hit.score:.3f}" + (f", rerank {reranked[chunk.chunk_id]:.2f}" if reranked else "")
            click.echo(f"{rank}. [{scores}] {chunk.title} ({chunk.source}{', ' + where if where else ''})")
            text = " ".join(chunk.text.split())
            click.echo(f"   {text[:300]}{'...' if len(text) > 300 else ''}")

    @banks.command("documents")
    @store_options
    @click.argument("name")
    def documents(config_path: str | None, name: str, **cli_values: Any) -> None:
        """List a bank's documents."""

        async def work(service: KnowledgeService) -> list[Any]:
            return await service.documents(name)

        for doc in run(config_path, cli_values, work):
            dup = f"\tduplicate of {doc.duplicate_of}" if doc.duplicate_of else ""
            click.echo(
                f"{doc.id}\t{doc.format}\t{doc.chunks} chunks\t{doc.data_class}\t{','.join(doc.acl)}\t{doc.source}{dup}"
            )

    @banks.command("delete-document")
    @store_options
    @click.argument("name")
    @click.argument("document_id")
    def delete_document(config_path: str | None, name: str, document_id: str, **cli_values: Any) -> None:
        """Remove one document (its chunks, vectors and full-text entries)."""

        async def work(service: KnowledgeService) -> list[str]:
            return await service.delete_document(name, document_id)

        removed = run(config_path, cli_values, work)
        click.echo(f"removed {len(removed)} document(s): {', '.join(removed)}")

    @banks.command("delete")
    @store_options
    @click.argument("name")
    @click.option("--yes", is_flag=True, help="Do not ask.")
    def delete_bank(config_path: str | None, name: str, yes: bool, **cli_values: Any) -> None:
        """Delete a bank with all its documents and chunks."""
        if not yes:
            click.confirm(f"Delete the bank {name} and everything in it?", abort=True)

        async def work(service: KnowledgeService) -> dict[str, int]:
            return await service.delete_bank(name)

        counts = run(config_path, cli_values, work)
        click.echo(f"deleted {name}: {counts['documents']} documents, {counts['chunks']} chunks")

    @cli.command("erase")
    @settings_options("data_dir", "database_url", "redis_url")
    @click.option("--bank", default=None, help="Only this bank (required with --document).")
    @click.option("--document", default=None, help="A document id (see `meshgate banks documents`).")
    @click.option("--source", default=None, help="The source a document was ingested from (its path).")
    @click.option(
        "--subject",
        default=None,
        help="A person's identifier (email, name): every document holding it, "
        "the cache entries and stored request content that hold it.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
    def erase(
        config_path: str | None,
        bank: str | None,
        document: str | None,
        source: str | None,
        subject: str | None,
        as_json: bool,
        **cli_values: Any,
    ) -> None:
        """Erase documents or a data subject from every store, and print a receipt."""
        from meshgate.cache.service import ResponseCache, backend_for
        from meshgate.knowledge.erase import Eraser

        try:
            config, settings = load(config_path, cli_values)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None

        async def work(service: KnowledgeService) -> Any:
            cache = ResponseCache(backend_for(config.cache, settings.data_dir, settings.redis_url))
            try:
                eraser = Eraser(service, service.records.db, [cache])
                return await eraser.erase(bank=bank, document=document, source=source, subject=subject)
            finally:
                await cache.close()

        receipt = run(config_path, cli_values, work)
        if as_json:
            click.echo(json.dumps(receipt.public(), indent=2))
            return
        click.echo(
            "erased: "
            + ", ".join(f"{count} {store.replace('_', ' ')}" for store, count in sorted(receipt.counts.items()))
        )
        for note in receipt.notes:
            click.echo(f"note: {note}", err=True)
