"""Anthropic-compatible front door (`POST /v1/messages`)."""

__all__ = ["protocol", "router", "service"]
