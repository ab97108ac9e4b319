"""Storage: SQLite by default, PostgreSQL at scale; migrations; the batched request log."""

from meshgate.store.database import Database, Queries, connect
from meshgate.store.migrations import MIGRATIONS, Migration, migrate
from meshgate.store.request_log import RequestLogWriter, RequestRecord, WriterStats

__all__ = [
    "MIGRATIONS",
    "Database",
    "Migration",
    "Queries",
    "RequestLogWriter",
    "RequestRecord",
    "WriterStats",
    "connect",
    "migrate",
]
