"""Storage: SQLite by default, PostgreSQL at scale; migrations; batched writers."""

from meshgate.store.batch_writer import BatchWriter, WriterStats
from meshgate.store.database import Database, Queries, connect
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
