"""Front doors: one package per wire format, sharing one flow (`http`)."""

__all__ = ["admin", "anthropic", "bedrock", "http", "openai"]
