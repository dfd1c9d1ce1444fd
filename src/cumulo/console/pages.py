"""The console's pages: one `Page` per entry in the navigation.

A page lives in `console/views/<name>.py`: a `PAGE` (its path, title and the roles that
see it) and `routes(console)` (its Starlette routes, each wrapped by `Console.view`,
which signs in, checks the role and the CSRF token). `console/views/__init__.py` lists
the modules in navigation order; adding a page is adding a module and one line there.
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = frozenset({"admin"})
MANAGERS = frozenset({"admin", "tenant_admin"})
EVERYONE = frozenset({"admin", "tenant_admin", "caller"})


@dataclass(frozen=True, slots=True)
class Page:
    path: str  # under /console, e.g. "/usage"
    title: str
    roles: frozenset[str]  # who sees it (and may open it): see `Console.role`

    @property
    def href(self) -> str:
        return "/console" + self.path
