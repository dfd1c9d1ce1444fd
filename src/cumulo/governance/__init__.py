"""Governance, in rooms: who is calling (`identity`), how much they may use (`quotas`),
what is checked (`guardrails`), what was done (`audit`) and what traffic looked like
(`telemetry`). `chain` runs the steps around each request."""

__all__ = ["audit", "chain", "guardrails", "identity", "quotas", "telemetry"]
