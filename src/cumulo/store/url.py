"""Database URLs: the forms `database_url` accepts, and the one way a URL is shown.

Any SQLAlchemy async URL works (`sqlite+aiosqlite:///path`,
`postgresql+asyncpg://user:password@host:5432/db`). The usual short forms are
accepted too and run on the async driver cumulo ships with:

    postgres://...  postgresql://...  ->  postgresql+asyncpg://...
    sqlite:///path                    ->  sqlite+aiosqlite:///path

A URL may carry a password; it is shown only through `safe_url`, which masks it,
so logs and error messages never contain it.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from cumulo.errors import ConfigError

# Driver-less forms -> the async driver used for them.
ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def parse_url(url: str | URL) -> URL:
    """`url` as an async SQLAlchemy URL (short forms mapped as above).

    Raises ConfigError if it is not a URL; the message never contains the password.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        # The string itself may hold a password: it is not repeated.
        raise ConfigError(
            "database_url: not a database URL (expected e.g. sqlite:///path or "
            "postgresql://user@host:5432/db)"
        ) from exc
    driver = ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def safe_url(url: str | URL) -> str:
    """`url` for display, with its password replaced by `***`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"
