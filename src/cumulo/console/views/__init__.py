"""The console's pages, in navigation order (see `console/pages.py`).

Each module has a `PAGE` (path, title, roles) and `routes(console)`. To add a page (for
example evaluations or fine-tuning), write `views/<name>.py` the same way, with its
templates in `console/templates/`, and add the module to `VIEWS` below.
"""

from types import ModuleType

from cumulo.console.views import (
    audit,
    batches,
    evals,
    files,
    fine_tuning,
    guardrails,
    keys,
    models,
    overview,
    playground,
    signin,
    usage,
)

VIEWS: tuple[ModuleType, ...] = (
    overview,
    models,
    playground,
    evals,
    fine_tuning,
    files,
    keys,
    guardrails,
    audit,
    usage,
)
# Routes without a navigation entry of their own (sign-in and sign-out; the batches, shown
# on the files page).
EXTRA: tuple[ModuleType, ...] = (signin, batches)

__all__ = ["EXTRA", "VIEWS"]
