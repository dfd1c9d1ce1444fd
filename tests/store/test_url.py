"""Database URLs: the short PostgreSQL forms work, and a password never shows."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from cumulo.errors import ConfigError, Unavailable
from cumulo.store.db import Store
from cumulo.store.url import parse_url, safe_url
from support import CUMULO_BIN, clean_env, free_port, write_config
from support.pg import postgres_database

PASSWORD = "s3cret-Pa55word"


@pytest.mark.parametrize(
    ("given", "used"),
    [
        (
            "postgres://u:pw@db.internal:5432/cumulo",
            "postgresql+asyncpg://u:pw@db.internal:5432/cumulo",
        ),
        ("postgresql://u@db.internal/cumulo", "postgresql+asyncpg://u@db.internal/cumulo"),
        ("postgresql+asyncpg://u@db/cumulo", "postgresql+asyncpg://u@db/cumulo"),
        ("sqlite:////var/lib/cumulo/cumulo.db", "sqlite+aiosqlite:////var/lib/cumulo/cumulo.db"),
        ("sqlite+aiosqlite:///cumulo.db", "sqlite+aiosqlite:///cumulo.db"),
    ],
)
def test_short_forms_run_on_the_async_drivers(given: str, used: str) -> None:
    assert parse_url(given).render_as_string(hide_password=False) == used


def test_passwords_are_masked_and_kept_intact() -> None:
    url = parse_url(f"postgres://cumulo:{PASSWORD}%40x@db:5432/cumulo")
    assert url.password == PASSWORD + "@x"  # percent-decoded, as the driver needs it
    assert safe_url(url) == "postgresql+asyncpg://cumulo:***@db:5432/cumulo"
    store = Store(url)
    assert PASSWORD not in repr(store) and PASSWORD not in store.safe_url


@pytest.mark.parametrize(
    "bad",
    [
        f"mysql://root:{PASSWORD}@db/cumulo",
        f"postgresql+psycopg2://root:{PASSWORD}@db/cumulo",
        f"not a url {PASSWORD}",
    ],
)
def test_unusable_urls_are_config_errors_without_the_password(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        Store(bad)
    assert err.value.message.startswith("database_url: ")
    assert PASSWORD not in str(err.value)


def test_unreachable_database_names_it_without_the_password() -> None:
    port = free_port()  # nothing listens there
    store = Store(f"postgresql://cumulo:{PASSWORD}@127.0.0.1:{port}/cumulo")

    async def main() -> None:
        try:
            await store.migrate()
        finally:
            await store.close()

    with pytest.raises(Unavailable) as err:
        asyncio.run(main())
    assert err.value.message.startswith(
        f"cannot connect to the database postgresql+asyncpg://cumulo:***@127.0.0.1:{port}/cumulo: "
    )
    assert PASSWORD not in err.value.message


def test_the_plain_postgresql_url_a_user_writes_works() -> None:
    with postgres_database() as url:
        plain = url.replace("postgresql+asyncpg://", "postgresql://")

        async def main() -> list[str]:
            store = Store(plain)
            try:
                await store.migrate()
                await store.add_key("k1", "first", "admin", "h" * 64)
                return [k.id for k in await store.list_keys()]
            finally:
                await store.close()

        assert asyncio.run(main()) == ["k1"]


def test_serve_on_an_unreachable_database_says_so_in_one_line(tmp_path: Path) -> None:
    work = tmp_path
    port = free_port()
    cfg = write_config(
        work / "cumulo.yaml",
        {"database_url": f"postgres://cumulo:{PASSWORD}@127.0.0.1:{port}/cumulo", "models": []},
    )
    done = subprocess.run(
        [str(CUMULO_BIN), "serve", "--config", str(cfg), "--port", str(free_port())],
        env=clean_env(CUMULO_HOME=str(work / "home")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(
        f"cumulo: error: cannot connect to the database postgresql+asyncpg://cumulo:***@127.0.0.1:{port}/cumulo: "
    )
    assert len(done.stderr.splitlines()) == 1
    assert PASSWORD not in done.stderr
