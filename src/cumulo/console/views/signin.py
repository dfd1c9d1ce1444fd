"""Sign in with a cumulo key, and sign out (not a navigation page)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cumulo.console.core import Console, Ctx
from cumulo.console.pages import EVERYONE, Page
from cumulo.console.session import COOKIE, CSRF_FIELD, SIGNIN_COOKIE
from cumulo.errors import AuthenticationFailed

PAGE = Page("/signout", "Sign out", EVERYONE)
MAX_KEY = 512


def _next(value: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if value and value.startswith("/console") and not value.startswith("/console/signin"):
        return value
    return "/console"


def routes(console: Console) -> list[Route]:
    sessions = console.sessions

    def _form(request: Request, message: str | None, status: int = 200) -> Response:
        cookie, token = sessions.signin_token()
        out = console.render(
            request,
            None,
            "signin.html",
            {"token": token, "message": message, "next": _next(request.query_params.get("next"))},
            status=status,
        )
        out.set_cookie(
            SIGNIN_COOKIE, cookie, max_age=1800, path="/console", httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        return out

    async def signin_page(request: Request) -> Response:
        return _form(request, None)

    async def signin(request: Request) -> Response:
        form = await request.form()
        token = form.get(CSRF_FIELD)
        key = form.get("key")
        if not sessions.signin_ok(
            request.cookies.get(SIGNIN_COOKIE), token if isinstance(token, str) else None
        ):
            return _form(request, "The sign-in form expired; try again.", 403)
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
            return _form(request, "Enter a cumulo API key.", 400)
        try:
            who = await console.platform.auth.check_token(key.strip())
        except AuthenticationFailed as exc:
            return _form(request, exc.message, 401)
        _, cookie = await sessions.open(who.key_id)
        nxt = form.get("next")
        out = RedirectResponse(_next(nxt if isinstance(nxt, str) else None), status_code=303)
        out.set_cookie(
            COOKIE, cookie, max_age=int(sessions.ttl_s), path="/console", httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        out.delete_cookie(SIGNIN_COOKIE, path="/console")
        return out

    async def signout(request: Request, ctx: Ctx) -> Response:
        await sessions.close(ctx.session)
        out = RedirectResponse("/console/signin", status_code=303)
        out.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
        return out

    async def home(request: Request, ctx: Ctx) -> Response:
        return RedirectResponse(console.home(ctx), status_code=303)

    return [
        Route("/console/signin", signin_page, methods=["GET"]),
        Route("/console/signin", signin, methods=["POST"]),
        Route("/console/signout", console.view(signout, PAGE), methods=["POST"]),
        Route("/console", console.view(home, PAGE), methods=["GET"]),
        Route("/console/", console.view(home, PAGE), methods=["GET"]),
    ]
