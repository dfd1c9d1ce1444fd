"""The running platform: every long-lived object of one process, built at start.

State lives here and is passed down; there are no module-level globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from cumulo.config import Config, cumulo_home, database_url
from cumulo.files import FileLimits, FileStore, blob_store
from cumulo.governance.audit.invocations import InvocationLog
from cumulo.governance.audit.ledger import Ledger
from cumulo.governance.chain import Governance, budget_alert
from cumulo.governance.guardrails import Guardrail, Verdict, build_guardrails
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.governance.identity.invalidation import Invalidator
from cumulo.governance.identity.key_service import KeyService
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.governance.identity.tenants import TenantService
from cumulo.governance.quotas.budgets import (
    BudgetScope,
    BudgetSpec,
    period_bounds,
)
from cumulo.governance.quotas.factory import make_budget_tracker, make_limiter
from cumulo.governance.telemetry.alerts import Alert, AlertSink
from cumulo.governance.telemetry.anomaly import AnomalyDetector
from cumulo.governance.telemetry.journal import UsageJournal, fingerprint
from cumulo.governance.telemetry.usage import USAGE_COLUMNS, UsageRecorder
from cumulo.observability.metrics import Metrics
from cumulo.observability.traffic import TrafficLog
from cumulo.providers.base import ProviderContext
from cumulo.providers.registry import ProviderRegistry
from cumulo.request.gateway import Gateway
from cumulo.request.guarding import Guarding
from cumulo.routing.catalog import Catalog
from cumulo.routing.router import Router
from cumulo.store.db import Store

log = logging.getLogger(__name__)

# Python's cyclic garbage collector, tuned for a server (see Platform._tune_gc). With the default
# gen-0 threshold of 700, the objects of the requests in flight and the queued usage records
# alone keep tripping collections; each promotes them, so full collections over every object in
# the process followed every half second under load, costing more CPU per request than the whole
# web framework (bench/gateway.py).
GC_GEN0_THRESHOLD = 10_000


class Platform:
    def __init__(self, config: Config, home: Path | None = None) -> None:
        self.config = config
        self.home = home or cumulo_home()
        self.store = Store(database_url(config, self.home))
        self.master_key = MasterKey.load(self.home)
        self.auth = Authenticator(
            self.store, env_admin_key=os.environ.get("CUMULO_ADMIN_KEY"), master_key=self.master_key
        )
        journal = None
        if config.usage.journal:
            where = fingerprint(self.store.safe_url)
            journal = UsageJournal(self.home / "journal", USAGE_COLUMNS, where)
        self.usage = UsageRecorder(self.store, config.usage, journal)
        self.ledger = Ledger(  # the audit ledger
            self.store, self.master_key, checkpoint_file=config.ledger.checkpoint_path(self.home)
        )
        self.files = FileStore(  # uploaded files and the files jobs write
            self.store,
            blob_store(config.files_url, self.home),
            FileLimits(config.files.max_file_bytes, config.files.max_files_per_tenant),
            self.ledger,
        )
        self.metrics = Metrics()  # this process's registry, served at GET /metrics
        self.traffic = TrafficLog(  # a line a minute in the log, when there was traffic
            self.metrics,
            config.server.traffic_log_interval_s,
            f"traffic (worker {os.getpid()})" if config.server.workers > 1 else "traffic",
        )
        self.registry = ProviderRegistry()
        self.redis: aioredis.Redis | None = None
        self.invalidator: Invalidator | None = None
        if config.redis_url:
            self.redis = aioredis.from_url(config.redis_url)
            self.invalidator = Invalidator(
                self.redis, f"{config.redis_prefix}:invalidate", self._reload_caches
            )
        prefix = config.redis_prefix
        self.limiter = make_limiter(config.redis_url, prefix=prefix)
        self.alerts = AlertSink(self.store, on_alert=self._count_alert)
        self.budgets = make_budget_tracker(
            config.redis_url,
            prefix=prefix,
            on_alert=lambda a: self.alerts.emit(budget_alert(a)),
            spend=self.store.spend_since,
        )
        self.invocations = InvocationLog(self.store, retention_days=self._retention_days)
        self.governance = Governance(
            self.limiter,
            self.budgets,
            AnomalyDetector(),
            self.alerts,
            self.invocations,
            on_cost=self.metrics.cost_usd,
        )
        self.guardrails = build_guardrails(config.all_guardrails)
        self.guarding = Guarding(
            self.guardrails,
            {m.name: m.guardrails for m in config.models},
            on_intervention=self._guardrail_intervened,
            public={g.id for g in config.all_guardrails} - {g.id for g in config.guardrails},
        )
        self.http: aiohttp.ClientSession | None = None
        self.provider_ctx = ProviderContext(None, self.home)  # its HTTP client comes at start
        self.catalog = Catalog(config, self.registry, self.provider_ctx)
        self.router = Router(
            self.catalog,
            local_rate=config.pricing.local,
            cached_discount=config.pricing.cached_discount,
        )
        self.gateway = Gateway(
            self.router, self.usage, self.metrics, self.governance, self.guarding
        )
        models = frozenset(m.name for m in config.models)
        self.keys = KeyService(self.store, self.master_key, self.audit, self.auth, models)
        self.tenants = TenantService(self.store, self.audit, self.auth, models, self.guardrail_ids)
        self._loading: asyncio.Task[None] | None = None
        self._gc_threshold: tuple[int, int, int] | None = None

    async def start(self) -> None:
        # One pooled upstream client per process; per-call timeouts come from each deployment.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            # One session serves every caller: a cookie an upstream sets on one caller's
            # request must not be sent on the next caller's.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self.provider_ctx.http = self.http
        self.metrics.watch(self.router)
        await self.auth.start()
        if self.invalidator is not None:
            await self.invalidator.start()
        self.usage.start()
        await self.usage.recover()  # what processes that died left in their journals
        self.ledger.start()
        await self.files.sweep()  # what uploads cut short by a crash left
        await self._seed_budgets()
        self.limiter.start()
        self.budgets.start()
        self.alerts.start()
        self.invocations.start()
        self._loading = asyncio.create_task(self.catalog.start(), name="cumulo-model-load")
        self.traffic.start()
        self._tune_gc()

    def _tune_gc(self) -> None:
        """Keep the collector off the request path; `close()` undoes this.

        What exists now (modules, config, pools, the key cache) lives as long as the process,
        so it is frozen out of every later collection, and collections are made rarer.
        """
        self._gc_threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gen0, *older = self._gc_threshold
        gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), *older)

    async def close(self) -> None:
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            gc.unfreeze()
            self._gc_threshold = None
        await self.traffic.close()
        if self._loading and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
        # Each writer flushes even if another failed (the store is down): logged, never silent.
        closing: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("usage records", self.usage.close),
            ("the audit ledger", self.ledger.close),
            ("limits", self.limiter.close),
            ("budget spend", self.budgets.close),
            ("alerts", self.alerts.close),
            ("invocation logs", self.invocations.close),
        ]
        if self.invalidator is not None:
            closing.append(("cache invalidation", self.invalidator.close))
        closing.append(("key last-used times", self.auth.close))
        for what, close in closing:
            try:
                await close()
            except Exception:
                log.exception("shutdown: writing %s failed; what was queued is lost", what)
        await self.router.deadlines.close()
        await self.catalog.close()
        if self.http:
            await self.http.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.store.close()

    async def _reload_caches(self) -> None:
        await self.auth.reload(force=True)

    def _count_alert(self, alert: Alert) -> None:
        self.metrics.alerts.labels(alert.kind).inc()

    def _retention_days(self, tenant_id: str) -> float | None:
        tenant = self.auth.tenant(tenant_id)
        return tenant.log_retention_days if tenant is not None else None

    async def _seed_budgets(self) -> None:
        """This period's spend of every tenant and key with a budget, from the usage table.

        With Redis, only counters it does not hold yet are seeded (it lost them, or this is
        the first replica): the shared counter of running replicas wins.
        """
        now = time.time()
        spend = {
            period: await self.store.spend_since(period_bounds(period, now)[0])
            for period in ("day", "month")
        }
        seeds = []
        for kind, ident, label, raw in self.auth.budgets():
            spec = BudgetSpec.from_mapping(raw)
            if spec is not None:
                usd = spend[spec.period].get((kind, ident), 0.0)
                seeds.append((BudgetScope(kind, ident, spec, label), usd))
        self.budgets.load(seeds)

    async def audit(
        self,
        actor: str | None,
        action: str,
        target: str | None,
        tenant_id: str | None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Record an admin action by key `actor`: appended to the audit ledger (durable
        before this returns), and other replicas told to reload their key and tenant caches."""
        await self.ledger.append(actor, action, target, tenant_id, data)
        if self.invalidator is not None:
            await self.invalidator.publish(action)

    def guardrail_ids(self) -> set[str]:
        """The ids of the configured guardrails."""
        return set(self.guardrails)

    def guardrail_applied(
        self, who: Principal, guard: Guardrail, source: str, verdict: Verdict
    ) -> None:
        """ApplyGuardrail checked a text: interventions count like the gateway's."""
        if verdict.intervened:
            self._guardrail_intervened(who, f"apply:{guard.id}", source, verdict)

    def _guardrail_intervened(
        self, who: Principal, model: str, source: str, verdict: Verdict
    ) -> None:
        """Count an intervention in the metrics and queue it for the ledger (no I/O)."""
        summary = verdict.summary()
        action = "blocked" if verdict.blocked else "anonymized"
        for gid in {f.guardrail_id for f in verdict.findings}:
            self.metrics.guardrail_interventions.labels(gid, source.lower(), action).inc()
        data = {"model": model, "source": source, **summary}
        self.ledger.record(who.key_id, "guardrail.intervened", model, who.tenant_id, data)

    async def models_loaded(self) -> None:
        """Return once every model has loaded or failed to (`Catalog.start` is done)."""
        if self._loading is not None:
            await asyncio.shield(self._loading)

    @property
    def models(self) -> Catalog:
        return self.catalog

    async def readiness(self) -> dict[str, bool]:
        store_ok = True
        try:
            await asyncio.wait_for(self.store.ping(), 2.0)
        except Exception:  # any failure means not ready; the reason is logged
            log.exception("store ping failed")
            store_ok = False
        checks = {
            "config": True,
            "store": store_ok,
            "models": self.catalog.ready,
        }
        if self.redis is not None:  # limits, budgets and cache invalidation live there
            checks["redis"] = True
            try:
                await asyncio.wait_for(self.redis.ping(), 2.0)
            except Exception as exc:  # noqa: BLE001 - not ready; logged without a traceback
                log.warning("redis ping failed: %s: %s", type(exc).__name__, exc)
                checks["redis"] = False
        return checks
