"""The eval run job kind: each data row generated through the gateway, then graded."""

from cumulo.jobs.evals.kind import KIND, EvalKind

__all__ = ["KIND", "EvalKind"]
