"""Admin API (`/admin/*`): keys, tenants, usage, ledger, alerts, guardrails, deployments and
engines. Needs an admin or tenant admin key (`access`)."""

__all__ = ["access", "alerts", "bounds", "ledger", "protocol", "router", "service", "tenants"]
