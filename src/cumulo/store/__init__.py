"""Persistence: SQLAlchemy Core on SQLite (default) or PostgreSQL, Alembic migrations."""

__all__ = [
    "batches",
    "checkpoints",
    "db",
    "ledger",
    "outage",
    "records",
    "schema",
    "sqlite_rows",
    "url",
]
