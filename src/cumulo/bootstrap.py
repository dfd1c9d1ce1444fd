"""First-start preparation, run once by `cumulo serve` before workers start.

Migrates the store, creates the master key (unless `CUMULO_MASTER_KEY` is set)
and the first admin key (unless `CUMULO_ADMIN_KEY` is set), writes a changed
configuration to the audit ledger, and builds the demo model when the config
needs it and it is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from cumulo.config import DEMO_MODEL, Config, database_url, demo_model_dir
from cumulo.governance.audit.ledger import Ledger, canonical
from cumulo.governance.identity.key_service import KeyService
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import Store

CONFIG_APPLIED = "config.applied"


async def _prepare_store(config: Config, home: Path) -> str | None:
    master = MasterKey.load(home)
    store = Store(database_url(config, home))
    try:
        await store.migrate()
        ledger = Ledger(store, master)
        await _ledger_config(ledger, config)
        issuer = KeyService(store, master, ledger.append)  # no key cache: nothing serves yet
        if os.environ.get("CUMULO_ADMIN_KEY") or await issuer.has_admin_key():
            return None
        _, token = await issuer.create(None, "admin", "admin")
        return token
    finally:
        await store.close()


async def _ledger_config(ledger: Ledger, config: Config) -> None:
    """A `config.applied` ledger entry whenever the served configuration changed.

    It holds the configuration's SHA-256 and the models and guardrails it offers (the
    configuration names env vars, never secrets; only its hash is kept anyway).
    """
    digest = hashlib.sha256(canonical(config.model_dump(mode="json"))).hexdigest()
    last = await ledger.entries(limit=1, action=CONFIG_APPLIED)
    if last and last[0].data.get("sha256") == digest:
        return
    data = {
        "sha256": digest,
        "models": [m.name for m in config.models],
        "guardrails": [g.id for g in config.all_guardrails],
        "previous_sha256": last[0].data.get("sha256") if last else None,
    }
    await ledger.append(None, CONFIG_APPLIED, None, None, data)


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
