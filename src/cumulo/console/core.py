"""What every console page shares: sign-in check, roles, CSRF, templates and errors.

`Console.view` wraps a page handler: no live session sends the browser to the sign-in
page; a role the page is not for, or a state-changing request without the session's
CSRF token, is refused (403); a `CumuloError` from a service becomes an HTML page with
its status (a tenant admin asking for another tenant's object gets the services' 404).
Everything a page shows comes from the same services the admin API uses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cumulo.api.batches import BatchService
from cumulo.api.evals import EvalService
from cumulo.api.fine_tuning import FineTuningService
from cumulo.api.http import openai_validation_error
from cumulo.console.format import FILTERS
from cumulo.console.pages import Page
from cumulo.console.session import COOKIE, CSRF_FIELD, CSRF_HEADER, Session, Sessions
from cumulo.errors import CumuloError, PermissionDenied
from cumulo.governance.identity.auth import Principal
from cumulo.platform import Platform

log = logging.getLogger(__name__)
HERE = Path(__file__).parent

Handler = Callable[[Request, "Ctx"], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Ctx:
    """The signed-in visitor of one request."""

    who: Principal
    session: Session
    csrf: str
    role: str  # the role pages are shown for (`Console.role`)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_manager(self) -> bool:
        return self.role in ("admin", "tenant_admin")


class Console:
    def __init__(
        self,
        platform: Platform,
        pages: list[Page],
        batches: BatchService | None = None,
        evals: EvalService | None = None,
        fine_tuning: FineTuningService | None = None,
    ) -> None:
        self.platform = platform
        self.pages = pages
        self.batches = batches  # the Batch API's operations (none: no batches shown)
        self.evals = evals  # the Evals API's operations (none: no evals shown)
        self.fine_tuning = fine_tuning  # the Fine-tuning API's (none: no jobs shown)
        self.sessions = Sessions(platform.store, platform.master_key)
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            auto_reload=False,
        )
        self.templates.filters.update(FILTERS)

    @staticmethod
    def role(who: Principal) -> str:
        """A tenant admin key without a tenant manages nothing: it is shown a caller's pages."""
        if who.role == "tenant_admin" and who.tenant_id is None:
            return "caller"
        return who.role

    def models(self, ctx: Ctx, kind: str | None = None) -> list[str]:
        """The catalog's models (of `kind`) this visitor's key may call: another tenant's
        fine-tuned models are not among them."""
        catalog = self.platform.catalog
        return [
            e.name
            for e in catalog.entries()
            if (kind is None or e.config.kind == kind) and catalog.may_use(ctx.who, e.name)
        ]

    def home(self, ctx: Ctx) -> str:
        """The first page this visitor may open."""
        return next(p.href for p in self.pages if ctx.role in p.roles)

    # -- rendering -----------------------------------------------------------------

    def render(
        self,
        request: Request,
        ctx: Ctx | None,
        template: str,
        values: Mapping[str, Any],
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        nav = [p for p in self.pages if ctx is not None and ctx.role in p.roles]
        html = self.templates.get_template(template).render(
            ctx=ctx, who=ctx.who if ctx else None, nav=nav, path=request.url.path, **values
        )
        out = HTMLResponse(html, status_code=status, headers=dict(headers or {}))
        out.headers["cache-control"] = "no-store"
        out.headers["x-frame-options"] = "DENY"
        out.headers["x-content-type-options"] = "nosniff"
        out.headers["referrer-policy"] = "same-origin"
        out.headers["content-security-policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'"
        )
        return out

    def error(self, request: Request, ctx: Ctx | None, status: int, message: str) -> Response:
        if request.headers.get("hx-request"):
            html = self.templates.get_template("_error.html").render(message=message)
            return HTMLResponse(html, status_code=status)
        return self.render(
            request, ctx, "error.html", {"status": status, "message": message}, status=status
        )

    # -- the wrapper every page handler goes through -----------------------------------

    def view(self, handler: Handler, page: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await self.sessions.resolve(request.cookies.get(COOKIE))
            who = self.platform.auth.principal(session.key_id) if session else None
            if session is None or who is None:
                if session is not None:  # its key was revoked or expired: so is the session
                    await self.sessions.close(session)
                return self._to_signin(request)
            ctx = Ctx(who, session, self.sessions.csrf(session), self.role(who))
            if request.method not in ("GET", "HEAD") and not await self._csrf_ok(request, ctx):
                return self.error(
                    request, ctx, 403, "This form has expired or did not come from the console "
                    "(missing or wrong CSRF token). Reload the page and try again."
                )  # fmt: skip
            try:
                if ctx.role not in page.roles:
                    raise PermissionDenied(f"The {page.title} page is not open to this key.")
                return await handler(request, ctx)
            except CumuloError as exc:
                return self.error(request, ctx, exc.status, exc.message)

        return endpoint

    async def _csrf_ok(self, request: Request, ctx: Ctx) -> bool:
        token = request.headers.get(CSRF_HEADER) or request.query_params.get(CSRF_FIELD)
        if token is None and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            token = value if isinstance(value, str) else None
        return self.sessions.csrf_ok(ctx.session, token)

    @staticmethod
    def _to_signin(request: Request) -> Response:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        url = "/console/signin?next=" + quote(target, safe="")
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"hx-redirect": url})
        if request.method not in ("GET", "HEAD"):
            return HTMLResponse("Signed out: sign in again.", status_code=401)
        return RedirectResponse(url, status_code=303)


async def form_fields(request: Request) -> dict[str, str]:
    """A urlencoded form's text fields (the CSRF token left out)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}


M = TypeVar("M", bound=BaseModel)


def checked(model: type[M], data: dict[str, Any]) -> M:
    """A form's values as an API wire model, or an InvalidRequest naming the field (the
    API's own checks, for the console's forms)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise openai_validation_error(exc) from exc
