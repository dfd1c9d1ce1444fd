"""Which deployment serves a request for a model."""

__all__ = ["breaker", "catalog", "deployment", "router", "strategies"]
