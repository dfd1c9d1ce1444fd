"""The request path: the gateway every front door calls, the request context each request
settles once, metered streams and the guardrails applied on the way."""

__all__ = ["context", "gateway", "guarding", "metering"]
