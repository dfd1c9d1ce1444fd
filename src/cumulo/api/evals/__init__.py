"""OpenAI's Evals API front door (`/v1/evals`), runs as jobs of kind `eval`."""

from cumulo.api.evals.router import routes
from cumulo.api.evals.service import EvalService

__all__ = ["EvalService", "routes"]
