"""First-start preparation, run once by `cumulo serve` before workers start.

Migrates the store, creates the master key (unless `CUMULO_MASTER_KEY` is set)
and the first admin key (unless `CUMULO_ADMIN_KEY` is set), and builds the demo
model when the config needs it and it is missing.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cumulo.config import DEMO_MODEL, Config, database_url, demo_model_dir
from cumulo.governance import keys
from cumulo.governance.masterkey import MasterKey
from cumulo.store.db import Store


async def _prepare_store(config: Config, home: Path) -> str | None:
    master = MasterKey.load(home)
    store = Store(database_url(config, home))
    try:
        await store.migrate()
        if os.environ.get("CUMULO_ADMIN_KEY") or await store.has_admin_key():
            return None
        new = keys.generate()
        await store.add_key(
            new.id,
            "admin",
            "admin",
            keys.hash_secret(new.secret),
            master.encrypt(new.id, new.secret),
        )
        return new.token
    finally:
        await store.close()


def prepare(config: Config, home: Path) -> str | None:
    """Make `home` ready to serve `config`. Returns a newly created admin key, if any."""
    home.mkdir(parents=True, exist_ok=True)
    demo = config.model(DEMO_MODEL)
    if demo is not None:
        path = next((d.path for d in demo.deployments if d.provider == "local"), None)
        if path and Path(path) == demo_model_dir(home):
            from cumulo.engine.demo import build_demo_model, is_demo_built

            if not is_demo_built(Path(path)):
                build_demo_model(Path(path))
    return asyncio.run(_prepare_store(config, home))
