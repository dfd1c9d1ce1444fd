"""OpenAI's Batch API: router, wire models, service."""
