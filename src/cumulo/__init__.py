"""cumulo: a self-hosted AI model platform.

The layers, each importing only those below it: `api` (front doors) → `request` (the
request path) → `routing` → `providers` → `engine`; `governance`, `observability` and
`store` beneath the request path; `platform` builds a process's objects, `app` the ASGI
app, `cli` the command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
