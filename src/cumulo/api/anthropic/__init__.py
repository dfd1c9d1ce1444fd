"""Anthropic-compatible front door (`POST /v1/messages`)."""
