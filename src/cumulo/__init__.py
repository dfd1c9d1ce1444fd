"""cumulo: a self-hosted AI model platform."""

__version__ = "0.1.0"
