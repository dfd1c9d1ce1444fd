"""OpenAI-compatible front door (`/v1/*`)."""

__all__ = ["protocol", "router", "service"]
