"""The governance steps around each request: limits and budgets before it, and after it
budgets, limits, anomaly detection and invocation logging.

    admit()     budgets.check (no I/O) → limiter.acquire (key and tenant scopes: in memory,
                or one Redis round trip) → an `Admission` the request carries
    finished()  release the limits, charge tokens and cost, feed the anomaly detector,
                log the invocation if its tenant asked for it (all queued, no I/O)

The gateway calls these; what each principal counts against (its key's and its tenant's
limits and budgets) is worked out once per principal and cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cumulo.governance.audit.invocations import InvocationLog
from cumulo.governance.identity.auth import Principal
from cumulo.governance.quotas.budgets import BudgetAlert, BudgetScope, BudgetSpec
from cumulo.governance.quotas.budgets import BudgetTracker as _MemoryBudgets
from cumulo.governance.quotas.limits import Limiter, Limits, Permit, Scope
from cumulo.governance.telemetry.alerts import Alert, AlertSink
from cumulo.governance.telemetry.anomaly import AnomalyDetector
from cumulo.governance.telemetry.usage import UsageRecord

BUDGET_ALERT = "budget.soft_threshold"


@dataclass(slots=True)
class Admission:
    """An admitted request's hold on its limits and what it is charged against."""

    who: Principal
    permits: list[Permit]  # its key's and tenant's, then the deployment's that served it
    budgets: Sequence[BudgetScope]
    client: str | None
    prompt_estimate: int = 0
    charged: int = 0  # tokens charged so far (the prompt estimate, then as produced)
    done: bool = False

    def produced(self, tokens: int) -> None:
        """Completion tokens as they are produced (streams): charged to the limits now."""
        if tokens > 0:
            self.charged += tokens
            for permit in self.permits:
                permit.consume(tokens)


@dataclass(slots=True, frozen=True)
class _Charges:
    who: Principal  # the principal these were built for (rebuilt when it changes)
    limits: tuple[Scope, ...]
    budgets: tuple[BudgetScope, ...]


def budget_alert(alert: BudgetAlert) -> Alert:
    """A budget's soft-threshold crossing as an alert for `GET /admin/alerts`."""
    return Alert(
        kind=BUDGET_ALERT,
        key_id=alert.id if alert.kind == "key" else None,
        tenant_id=alert.id if alert.kind == "tenant" else None,
        ts=alert.period_start.timestamp(),
        severity="warning",
        message=alert.message,
        details={
            "scope": alert.kind,
            "id": alert.id,
            "budget_usd": alert.spec.usd,
            "period": alert.spec.period,
            "spent_usd": round(alert.spent_usd, 6),
            "soft_pct": alert.spec.soft_pct,
        },
    )


class Governance:
    def __init__(
        self,
        limiter: Limiter,
        budgets: _MemoryBudgets,
        detector: AnomalyDetector,
        alerts: AlertSink,
        invocations: InvocationLog,
        on_cost: Callable[[str, float], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.budgets = budgets
        self.detector = detector
        self.alerts = alerts
        self.invocations = invocations
        self.on_cost = on_cost
        self._charges: dict[str, _Charges] = {}

    def _charges_of(self, who: Principal) -> _Charges:
        c = self._charges.get(who.key_id)
        if c is None or c.who is not who:
            c = self._charges[who.key_id] = _build(who)
        return c

    async def admit(self, who: Principal, prompt_estimate: int, client: str | None) -> Admission:
        """Refuse (`BudgetExceeded`, `RateLimited`) or admit the request."""
        c = self._charges_of(who)
        if c.budgets:
            self.budgets.check(c.budgets)
        permits = [await self.limiter.acquire(c.limits, prompt_estimate)] if c.limits else []
        return Admission(who, permits, c.budgets, client, prompt_estimate, prompt_estimate)

    def budget_left(self, who: Principal) -> float | None:
        """The least USD left this period among `who`'s budgets (None: it has none)."""
        c = self._charges_of(who)
        if not c.budgets:
            return None
        return min(scope.spec.usd - self.budgets.spent(scope) for scope in c.budgets)

    def charge(self, who: Principal, rec: UsageRecord) -> None:
        """Settle work done outside a request (a training run): its cost counts against
        `who`'s budgets as a request's would (the caller queues `rec` in usage)."""
        self.finished(Admission(who, [], self._charges_of(who).budgets, None), rec)

    async def hold_deployment(self, adm: Admission, label: str, limits: Limits) -> Permit:
        """Admit the request on a deployment's own limits (`RateLimited`: try another)."""
        permit = await self.limiter.acquire(
            (Scope("deployment", label, limits),), adm.prompt_estimate
        )
        adm.permits.append(permit)
        return permit

    def finished(
        self,
        adm: Admission | None,
        rec: UsageRecord,
        request: Any = None,
        response: str | None = None,
    ) -> None:
        """Settle a finished request (once; called where its usage record is queued)."""
        if adm is not None and not adm.done:
            adm.done = True
            extra = rec.prompt_tokens + rec.completion_tokens - adm.charged
            for permit in adm.permits:
                if extra > 0:
                    permit.consume(extra)
                permit.release()
            if rec.cost_usd and adm.budgets:
                self.budgets.add(adm.budgets, rec.cost_usd)
        if rec.cost_usd and self.on_cost is not None:
            self.on_cost(rec.model, rec.cost_usd)
        if rec.key_id is None:
            return
        alerts = self.detector.observe(
            rec.key_id,
            rec.tenant_id,
            rec.ts or None,
            rec.model,
            adm.client if adm is not None else None,
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.status,
            rec.guardrail_interventions,
        )
        if alerts:
            self.alerts.emit_all(alerts)
        who = adm.who if adm is not None else None
        if who is not None and who.log_invocations and rec.tenant_id and request is not None:
            self.invocations.record(
                rec.tenant_id,
                rec.key_id,
                rec.model,
                request,
                response,
                endpoint=rec.endpoint,
                status=rec.status,
                prompt_tokens=rec.prompt_tokens,
                completion_tokens=rec.completion_tokens,
                ts=rec.ts or None,
            )


def _build(who: Principal) -> _Charges:
    limits: list[Scope] = []
    budgets: list[BudgetScope] = []
    key_label = who.name
    for kind, ident, label, lim, bud in (
        ("key", who.key_id, key_label, who.key_limits, who.key_budget),
        ("tenant", who.tenant_id, who.tenant_name, who.tenant_limits, who.tenant_budget),
    ):
        if ident is None:
            continue
        parsed = Limits.from_mapping(lim)
        if parsed is not None:
            limits.append(Scope(kind, ident, parsed, label))
        spec = BudgetSpec.from_mapping(bud)
        if spec is not None:
            budgets.append(BudgetScope(kind, ident, spec, label))
    return _Charges(who, tuple(limits), tuple(budgets))
