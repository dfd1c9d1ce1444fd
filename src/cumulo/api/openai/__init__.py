"""OpenAI-compatible front door (`/v1/*`)."""
