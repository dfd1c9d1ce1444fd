"""OpenAI's Batch API front door (`/v1/batches`) over the job runner (`cumulo.jobs`)."""

from cumulo.api.batches.router import routes
from cumulo.api.batches.service import BatchService, render_batch

__all__ = ["BatchService", "render_batch", "routes"]
