"""`cumulo ledger verify` and `cumulo ledger list`, run as a user runs them: a subprocess
reading the platform's database directly, with no server running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cumulo.governance.audit.ledger import Ledger
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import Store
from support import CUMULO_BIN, CumuloServer, clean_env


def cumulo_ledger(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CUMULO_BIN), "ledger", *args],
        env=clean_env(CUMULO_HOME=str(home)),
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )


def write_entries(home: Path, n: int) -> None:
    """What a running platform would have written: the default database under the home."""

    async def main() -> None:
        store = Store(f"sqlite:///{home / 'cumulo.db'}")
        try:
            await store.migrate()
            ledger = Ledger(store, MasterKey.load(home))
            for i in range(1, n + 1):
                await ledger.append("k-admin", "key.create", f"key{i}", "t1", {"name": f"app{i}"})
        finally:
            await store.close()

    asyncio.run(main())


def test_verify_passes_then_names_the_first_bad_entry(tmp_path: Path) -> None:
    write_entries(tmp_path, 5)
    ok = cumulo_ledger(tmp_path, "verify")
    assert ok.returncode == 0, ok.stderr
    assert "entries checked: 5" in ok.stdout and ok.stdout.strip().endswith("ok")
    assert "head: entry 5 " in ok.stdout

    listed = cumulo_ledger(tmp_path, "list", "--limit", "2")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "TENANT"]
    assert [line.split()[0] for line in lines[1:]] == ["5", "4"]
    assert lines[1].split()[2:] == ["k-admin", "key.create", "key5", "t1"]

    with sqlite3.connect(tmp_path / "cumulo.db") as db:
        db.execute("UPDATE ledger SET target = 'key-x' WHERE seq = 3")
    bad = cumulo_ledger(tmp_path, "verify")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "cumulo: ledger: FAILED at entry 3 (edited): "
        "entry 3 was edited: its hash does not match its contents"
    )
    assert "entries checked: 2" in bad.stdout


def test_verify_names_truncation_in_json(tmp_path: Path) -> None:
    write_entries(tmp_path, 4)
    with sqlite3.connect(tmp_path / "cumulo.db") as db:
        db.execute("DELETE FROM ledger WHERE seq >= 3")
    result = cumulo_ledger(tmp_path, "verify", "--json")
    assert result.returncode == 1
    assert '"reason": "truncated"' in result.stdout and '"seq": 3' in result.stdout
    assert "FAILED at entry 3 (truncated)" in result.stderr


def test_without_the_master_key_or_database_nothing_is_created(tmp_path: Path) -> None:
    no_key = cumulo_ledger(tmp_path, "verify")
    assert no_key.returncode == 1
    assert no_key.stderr.startswith("cumulo: error: no master key")
    MasterKey.load(tmp_path)  # creates the key file
    no_db = cumulo_ledger(tmp_path, "verify")
    assert no_db.returncode == 1 and "no database at" in no_db.stderr
    assert not (tmp_path / "cumulo.db").exists()


def test_admin_actions_of_a_running_platform_are_in_its_ledger(cumulo: CumuloServer) -> None:
    key = cumulo.create_key("ledger-app")
    with cumulo.admin() as http:
        assert http.delete(f"/admin/keys/{key.id}").status_code == 200

    listed = cumulo_ledger(cumulo.home, "list", "--limit", "1000", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [e for e in map(json.loads, listed.stdout.splitlines()) if e["target"] == key.id]
    assert [(e["action"], e["actor"]) for e in mine] == [
        ("key.revoke", "admin-env"), ("key.create", "admin-env")]  # fmt: skip
    assert mine[1]["data"]["name"] == "ledger-app" and "key" not in mine[1]["data"]
    assert key.token.split(".", 1)[1] not in listed.stdout

    verified = cumulo_ledger(cumulo.home, "verify")
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize("export", [False, True], ids=["database-only", "exported-head"])
def test_a_truncated_ledger_is_not_ok_after_the_server_writes_again(
    cumulo_factory: Callable[..., CumuloServer], export: bool
) -> None:
    """Delete the newest entries and the checkpoint under a running server: verify fails,
    and still fails once the server has appended again (resuming the chain), until an admin
    acknowledges the repair, with the CLI or the API."""
    config: dict[str, Any] = {"models": []}
    if export:
        config["ledger"] = {"checkpoint_file": "export/ledger-head.json"}
    server = cumulo_factory(config)
    cfg = str(server.home.parent / "cumulo.yaml")

    def ledger_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return cumulo_ledger(server.home, *args, "--config", cfg)

    with server.admin() as admin:
        for i in range(4):
            assert admin.post("/admin/keys", json={"name": f"k{i}"}).status_code == 201
        [[last]] = server.sql("SELECT MAX(seq) FROM ledger")
        with contextlib.closing(sqlite3.connect(server.db_path)) as db, db:
            db.execute("DELETE FROM ledger WHERE seq >= ?", (last - 1,))
            db.execute("DELETE FROM ledger_head")
        assert ledger_cli("verify").returncode == 1

        assert admin.post("/admin/keys", json={"name": "after"}).status_code == 201
        repair = last - 1  # where the server resumed the chain
        failed = ledger_cli("verify")
        assert failed.returncode == 1, failed.stdout
        assert f"FAILED at entry {repair} (repaired)" in failed.stderr
        assert f"cumulo ledger acknowledge --seq {repair}" in failed.stderr
        if export:
            assert f"entries {repair}-{last} were deleted" in failed.stderr
        via_api = admin.get("/admin/ledger/verify").json()
        assert via_api["ok"] is False and via_api["unacknowledged_repairs"] == [repair]

        wrong = ledger_cli("acknowledge", "--seq", str(repair + 1), "--reason", "no")
        assert wrong.returncode == 1 and "nothing to acknowledge" in wrong.stderr
        done = ledger_cli("acknowledge", "--seq", str(repair), "--reason", "restored a backup")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"acknowledged entry {repair} in entry {repair + 2}"

        ok = ledger_cli("verify")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip().endswith("ok")
        assert f"acknowledged entry {repair}: restored a backup" in ok.stderr
        assert admin.get("/admin/ledger/verify").json()["ok"] is True
        listed = ledger_cli("list", "--limit", "1", "--json")
        entry = json.loads(listed.stdout)
        assert entry["action"] == "ledger.acknowledged" and entry["actor"].startswith("cli:")
    if export:
        exported = json.loads((server.home / "export" / "ledger-head.json").read_text())
        assert exported["seq"] == repair + 2
