"""Bedrock-runtime-compatible front door (`/model/{modelId}/converse[-stream]`)."""

__all__ = ["guardrail", "protocol", "router", "service"]
