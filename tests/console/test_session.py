"""Console sessions in the store, on SQLite and PostgreSQL: open, resolve, sign out, expire,
and cookies that were tampered with or signed under another master key."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulo.console.session import Sessions
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import Store
from support.stores import run_with_store, sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        yield request.getfixturevalue("postgres_url")


def test_a_session_lives_until_sign_out_or_expiry(url: str) -> None:
    async def scenario(store: Store) -> None:
        key = MasterKey(os.urandom(32))
        sessions = Sessions(store, key)
        session, cookie = await sessions.open("key1")
        found = await sessions.resolve(cookie)
        assert found is not None and found.key_id == "key1" and found.id == session.id
        assert sessions.csrf_ok(found, sessions.csrf(session))
        assert not sessions.csrf_ok(found, "")
        # Another replica with the same master key accepts it; another master key does not.
        assert await Sessions(store, key).resolve(cookie) is not None
        assert await Sessions(store, MasterKey(os.urandom(32))).resolve(cookie) is None
        assert (
            await sessions.resolve(cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1])
            is None
        )
        _, other_cookie = await sessions.open("key1")
        await sessions.close(found)
        assert await sessions.resolve(cookie) is None  # signed out, wherever the cookie is
        assert await sessions.resolve(other_cookie) is not None  # the other sign-in lives on
        short = Sessions(store, key, ttl_s=-1)  # already expired when made
        _, dead = await short.open("key2")
        assert await sessions.resolve(dead) is None

    run_with_store(url, scenario)
