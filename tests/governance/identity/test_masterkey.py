"""The master key (env or a 0600 file under CUMULO_HOME) and the 0002 migration it goes with."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from alembic import command

from cumulo.errors import ConfigError
from cumulo.governance.identity import keys
from cumulo.governance.identity.masterkey import ENV, MasterKey
from cumulo.store.db import Store, _alembic_config


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def test_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    first = MasterKey.load(tmp_path / "home")
    path = tmp_path / "home" / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text())) == 32
    sealed = first.encrypt("k1", "s3cret")
    assert "s3cret" not in sealed and "s3cret" not in repr(first)
    assert MasterKey.load(tmp_path / "home").decrypt("k1", sealed) == "s3cret"
    assert os.listdir(tmp_path / "home") == ["master.key"]  # no temporary file left behind


def test_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    sealed = MasterKey(b"\0" * 32).encrypt("k", "v")  # only to have something to compare
    found: list[MasterKey] = []
    threads = [
        threading.Thread(target=lambda: found.append(MasterKey.load(tmp_path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blob = found[0].encrypt("k", "v")
    assert all(m.decrypt("k", blob) == "v" for m in found)
    with pytest.raises(ValueError):
        found[0].decrypt("k", sealed)


def test_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, base64.b64encode(b"\x07" * 32).decode())
    sealed = MasterKey.load(tmp_path).encrypt("k1", "v")
    assert not (tmp_path / "master.key").exists()
    assert MasterKey(b"\x07" * 32).decrypt("k1", sealed) == "v"
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ConfigError, match=ENV):
            MasterKey.load(tmp_path)


def test_a_sealed_secret_is_bound_to_its_key_id(tmp_path: Path) -> None:
    master = MasterKey.load(tmp_path)
    sealed = master.encrypt("k1", "v")
    with pytest.raises(ValueError):
        master.decrypt("k2", sealed)
    with pytest.raises(ValueError):
        master.decrypt("k1", sealed[:-4] + "AAAA")
    with pytest.raises(ValueError):
        master.decrypt("k1", "v2." + sealed[3:])


def test_migration_0002_keeps_existing_keys_as_bearer_only(tmp_path: Path) -> None:
    db = tmp_path / "cumulo.db"
    url = f"sqlite+aiosqlite:///{db}"

    async def main() -> None:
        store = Store(url)
        try:
            async with store.engine.begin() as conn:

                def to_0001(sync_conn: object) -> None:
                    cfg = _alembic_config(url)
                    cfg.attributes["connection"] = sync_conn
                    command.upgrade(cfg, "0001")

                await conn.run_sync(to_0001)
            with contextlib.closing(sqlite3.connect(db)) as raw, raw:
                raw.execute(
                    "INSERT INTO api_keys (id, name, role, secret_hash, created_at) "
                    "VALUES ('old', 'old', 'caller', ?, 0)",
                    (keys.hash_secret("s"),),
                )
            await store.migrate()
            [row] = await store.list_keys()
            assert (row.id, row.secret_enc) == ("old", None)
            new = await store.add_key("new", "new", "caller", keys.hash_secret("t"), "v1.sealed")
            assert new.secret_enc == "v1.sealed"
            assert [r.secret_enc for r in await store.list_keys()] == [None, "v1.sealed"]
        finally:
            await store.close()

    asyncio.run(main())
