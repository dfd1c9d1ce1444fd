"""Observability: Prometheus metrics (`GET /metrics`) and the traffic log line."""

__all__ = ["metrics", "traffic"]
