"""Persistence: SQLAlchemy Core on SQLite (default) or PostgreSQL, Alembic migrations."""
