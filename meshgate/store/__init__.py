"""Storage: SQLite by default, PostgreSQL at scale; migrations; batched writers.

`connect()` is the facade that picks a backend by URL. The backends (sqlite.py, postgres.py) build on
the interface in database.py and never import this package's face back.
"""

from urllib.parse import urlsplit

from meshgate.errors import ConfigError
from meshgate.store.batch_writer import BatchWriter, WriterStats
from meshgate.store.database import Database, Queries, redact
from meshgate.store.migrations import MIGRATIONS, Migration, migrate
from meshgate.store.usage import INSERT_USAGE, UsageRecord

__all__ = [
    "INSERT_USAGE",
    "MIGRATIONS",
    "BatchWriter",
    "Database",
    "Migration",
    "Queries",
    "UsageRecord",
    "WriterStats",
    "connect",
    "migrate",
]


async def connect(url: str) -> Database:
    """The database at `url`: sqlite:///path/to/file.db or postgresql://user@host:5432/db."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from meshgate.store.sqlite import SQLiteDatabase

        return await SQLiteDatabase.open(url)
    if scheme in ("postgresql", "postgres"):
        from meshgate.store.postgres import PostgresDatabase

        return await PostgresDatabase.open(url)
    raise ConfigError(
        f"database_url: unsupported scheme {scheme or '(none)'!r} in {redact(url)}; "
        "use sqlite:///path/to/file.db or postgresql://user@host:5432/db"
    )
