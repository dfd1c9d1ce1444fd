"""The OpenAI Files API front door (`/v1/files`) over `cumulo.files.FileStore`."""

from cumulo.api.files.router import routes
from cumulo.api.files.service import FilesService

__all__ = ["FilesService", "routes"]
