"""OpenAI's fine-tuning API front door (`/v1/fine_tuning/jobs`) over the job runner."""

from cumulo.api.fine_tuning.router import routes
from cumulo.api.fine_tuning.service import FineTuningService, render_job

__all__ = ["FineTuningService", "render_job", "routes"]
