"""Which deployment serves a request for a model."""
