"""First-start preparation: the admin key and the configuration go into the audit ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cumulo.bootstrap import CONFIG_APPLIED, prepare
from cumulo.config import parse_config
from cumulo.governance.audit.ledger import Ledger
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import Store


def entries(home: Path) -> list[tuple[str, dict[str, object]]]:
    async def read() -> list[tuple[str, dict[str, object]]]:
        store = Store(f"sqlite+aiosqlite:///{home / 'cumulo.db'}")
        try:
            ledger = Ledger(store, MasterKey.load(home))
            assert (await ledger.verify()).ok
            return [(e.action, e.data) for e in await ledger.entries(after_seq=0)]
        finally:
            await store.close()

    return asyncio.run(read())


def config(*models: str) -> object:
    return parse_config(
        {
            "models": [
                {
                    "name": m,
                    "deployments": [
                        {"provider": "openai", "model": m, "base_url": "http://127.0.0.1:9/v1"}
                    ],
                }
                for m in models
            ]
        },
        "test",
    )


def test_the_first_admin_key_and_each_new_configuration_are_ledgered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUMULO_ADMIN_KEY", raising=False)
    monkeypatch.delenv("CUMULO_MASTER_KEY", raising=False)
    token = prepare(config("a"), tmp_path)  # type: ignore[arg-type]
    assert token is not None
    assert prepare(config("a"), tmp_path) is None  # type: ignore[arg-type]
    prepare(config("a", "b"), tmp_path)  # type: ignore[arg-type]
    got = entries(tmp_path)
    assert [a for a, _ in got] == [CONFIG_APPLIED, "key.create", CONFIG_APPLIED]
    first, second = got[0][1], got[2][1]
    assert first["models"] == ["a"] and second["models"] == ["a", "b"]
    assert second["previous_sha256"] == first["sha256"] != second["sha256"]
    assert token.split(".")[1] not in str(got)
