"""Test doubles that are real servers: upstreams cumulo talks to over loopback HTTP."""

from fakes.openai_upstream import FakeOpenAIUpstream, Recorded, embedding_of

__all__ = ["FakeOpenAIUpstream", "Recorded", "embedding_of"]
