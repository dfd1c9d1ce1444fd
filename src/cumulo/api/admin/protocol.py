"""Admin API wire models: keys, tenants, and the limits and budgets they carry.

Every number is bounded (a value out of range is a 400 naming the field): what is stored
must be renderable as JSON by every reader later (64-bit integers, finite floats).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Upper bounds: far above any real use, far below what JSON readers can hold (2**53).
MAX_RPM = 10**9  # requests per minute
MAX_TPM = 10**12  # tokens per minute
MAX_CONCURRENCY = 10**6  # requests in flight
MAX_BUDGET_USD = 10**9


# A name is printable text: no control characters (PostgreSQL refuses NUL; logs would mangle).
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
_TENANT_NAME = r"^[^\x00-\x1f\x7f#]+$"  # and no '#': deleted tenants' names use it


class LimitsSpec(_Wire):
    """Limits of a tenant, a key or a deployment (omitted or null: unlimited)."""

    rpm: int | None = Field(None, ge=1, le=MAX_RPM, description="Requests per minute.")
    tpm: int | None = Field(
        None,
        ge=1,
        le=MAX_TPM,
        description="Tokens per minute (prompt, and completion as it is produced).",
    )
    concurrency: int | None = Field(
        None, ge=1, le=MAX_CONCURRENCY, description="Requests in flight at once."
    )


class BudgetSpec(_Wire):
    """Spend allowed per UTC calendar day or month, in USD."""

    usd: float = Field(gt=0, le=MAX_BUDGET_USD, description="The budget in US dollars.")
    period: Literal["day", "month"] = "month"
    soft_pct: float = Field(
        0.8, gt=0, le=1, description="Share of the budget at which an alert is raised."
    )


class CreateKey(_Wire):
    name: str = Field(
        min_length=1, max_length=200, pattern=_PRINTABLE, description="A label for the key."
    )
    role: Literal["caller", "tenant_admin", "admin"] = Field(
        "caller",
        description="`caller` (the /v1 API), `tenant_admin` (its tenant's keys and usage) or "
        "`admin` (the whole platform; platform admins only, and never in a tenant).",
    )
    tenant_id: str | None = Field(
        None, max_length=32, description="The key's tenant (a tenant admin's own, by default)."
    )
    models: list[str] | None = Field(
        None,
        max_length=1000,
        description="Models this key may use, within its tenant's (null: all its tenant's).",
    )
    limits: LimitsSpec | None = None
    budget: BudgetSpec | None = None


class RotateKey(_Wire):
    grace_s: float = Field(
        86400.0,
        ge=0,
        le=90 * 86400,
        description="Seconds the old key keeps working after the new one is issued.",
    )


class TenantFields(_Wire):
    models: list[str] | None = Field(
        None, max_length=1000, description="Models the tenant may use (null: all)."
    )
    limits: LimitsSpec | None = None
    budget: BudgetSpec | None = None
    guardrails: list[str] = Field(
        default_factory=list, max_length=50, description="Guardrail ids applied to its traffic."
    )
    log_invocations: StrictBool = Field(
        False, description="Store its prompts and responses (off by default)."
    )
    log_retention_days: int | None = Field(
        None, ge=1, le=3650, description="Days invocation logs are kept (default: 30)."
    )


class CreateTenant(TenantFields):
    name: str = Field(min_length=1, max_length=200, pattern=_TENANT_NAME)


class UpdateTenant(_Wire):
    """PATCH: only the fields given change (null clears models, limits or budget)."""

    name: str | None = Field(None, min_length=1, max_length=200, pattern=_TENANT_NAME)
    models: list[str] | None = Field(None, max_length=1000)
    limits: LimitsSpec | None = None
    budget: BudgetSpec | None = None
    guardrails: list[str] | None = Field(None, max_length=50)
    log_invocations: StrictBool | None = None
    log_retention_days: int | None = Field(None, ge=1, le=3650)
