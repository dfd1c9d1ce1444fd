"""The batch job kind: OpenAI's Batch API over the job runner."""

from cumulo.jobs.batch.kind import KIND, OUTPUT_PURPOSE, BatchKind
from cumulo.jobs.batch.lines import CHAT, EMBEDDINGS, ENDPOINTS, LineCaller

__all__ = ["CHAT", "EMBEDDINGS", "ENDPOINTS", "KIND", "OUTPUT_PURPOSE", "BatchKind", "LineCaller"]
