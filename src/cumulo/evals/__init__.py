"""Evaluation: testing criteria (graders), templating and the checks of eval items.

The Evals API front door is `cumulo.api.evals`; a run is a job of kind `eval`
(`cumulo.jobs.evals`); the comparison of runs and its report are `cumulo.evals.compare`.
"""

from cumulo.evals.graders import CriterionInvalid, Grader, GradeResult, check
from cumulo.evals.templates import TemplateError, render, sample_scope

__all__ = [
    "CriterionInvalid",
    "GradeResult",
    "Grader",
    "TemplateError",
    "check",
    "render",
    "sample_scope",
]
