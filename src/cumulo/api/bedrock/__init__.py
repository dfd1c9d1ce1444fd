"""Bedrock-runtime-compatible front door (`/model/{modelId}/converse[-stream]`)."""
