"""The HTTP server under the app: uvicorn with a protocol that protects it from callers
without a key (header and body limits and deadlines, a connection cap), and ends the
requests still in flight when a shutdown runs out of time."""

from cumulo.server.run import raise_open_files_limit, uvicorn_options

__all__ = ["raise_open_files_limit", "uvicorn_options"]
