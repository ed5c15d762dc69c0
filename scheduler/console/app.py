"""The console's HTTP server: its own listener (``console.listen``), pages under /console/.

Every response carries a Content-Security-Policy allowing only the console's own scripts and
styles; every request but the sign-in page needs a session; every POST but the sign-in form
needs the session's CSRF token; every action needs the admin role.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from ..config import Settings
from ..errors import NotFound, UserError
from ..reports import fmt_time
from ..repository import Repository, utcnow
from . import auth

log = logging.getLogger("scheduler.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SettingsSource = Callable[[], Settings]
STATIC_DIR = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer Chromium names a form's origin "null"
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Reachable without a session.
PUBLIC_PATHS = frozenset({"/console/login"})
# POSTs whose CSRF token comes in the multipart body (checked by the handler, first field).
MULTIPART_PATHS = ("/console/campaigns/new", "/console/suppressions/import")


class Console:
    """What every handler needs: the repository, the current settings, the templates."""

    def __init__(self, repo: Repository, settings: SettingsSource) -> None:
        self.repo = repo
        self.settings = settings
        self.templates = Environment(loader=PackageLoader("scheduler.console", "templates"), autoescape=True,
                                     undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["time"] = fmt_time
        self.templates.filters["count"] = lambda value: f"{value:,}"

    def render(self, request: web.Request, name: str, status: int = 200, **values: object) -> web.Response:
        identity = _IDENTITY.get()
        page = self.templates.get_template(name).render(me=identity, path=request.path, **values)
        return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


CONSOLE = web.AppKey("console", Console)


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


# Who sent the request being handled (aiohttp handles each request in a task of its own).
_IDENTITY: ContextVar[auth.Identity | None] = ContextVar("console_identity", default=None)


def identity_of(request: web.Request) -> auth.Identity:
    found = _IDENTITY.get()
    if found is None:  # only the sign-in page is served without one, and it does not ask
        raise web.HTTPSeeOther("/console/login")
    return found


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer as it is sent (errors and streamed files included): the CSP, no sniffing,
    no framing, no caching of pages."""
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith("/console/static/"):
        response.headers["Cache-Control"] = "no-store"


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A refusal the user can act on is a page naming it (the CLI's message), not a traceback."""
    try:
        return await handler(request)
    except NotFound as exc:
        return console_of(request).render(request, "error.html", status=404, message=str(exc))
    except UserError as exc:
        return console_of(request).render(request, "error.html", status=409, message=str(exc))


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is asking (from the cookie); without a live session only the sign-in page answers."""
    if request.path.startswith("/console/static/") or request.path in PUBLIC_PATHS:
        return await handler(request)
    token = request.cookies.get(auth.COOKIE_NAME)
    found = await console_of(request).repo.session_user(auth.token_hash(token), utcnow()) if token else None
    if found is None:
        if request.method == "POST":  # no session, so no CSRF token: nothing is changed
            raise web.HTTPForbidden(text="refused: sign in first")
        if request.headers.get("X-Console-Fragment"):  # the live refresh: the script goes to the sign-in page
            raise web.HTTPUnauthorized(text="sign in again")
        raise web.HTTPSeeOther("/console/login")
    session, user = found
    _IDENTITY.set(auth.Identity(user.name, user.role, session.csrf_token, session.token_sha256))
    return await handler(request)


@web.middleware
async def csrf_and_roles(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A POST needs the page's CSRF token (403 without it) and, but for signing out, the admin role."""
    if request.method != "POST" or request.path in PUBLIC_PATHS:
        return await handler(request)
    identity = identity_of(request)
    if auth.foreign_origin(request.headers.get("Origin"), request.host):
        raise web.HTTPForbidden(text="refused: the form was sent from another site")
    if request.path not in MULTIPART_PATHS:
        form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
        given = request.headers.get(auth.CSRF_HEADER) or form.get(auth.CSRF_FIELD)
        if not auth.csrf_ok(identity.csrf_token, given if isinstance(given, str) else None):
            raise web.HTTPForbidden(text="refused: this form has no valid CSRF token; reload the page")
    elif request.content_type != "multipart/form-data":
        raise web.HTTPForbidden(text="refused: this form has no valid CSRF token; reload the page")
    if request.path != "/console/logout" and not identity.is_admin:
        raise web.HTTPForbidden(text="refused: viewers cannot change anything")
    return await handler(request)


def require_admin(request: web.Request) -> auth.Identity:
    """For the pages that lead to an action (forms, confirmations): 403 for a viewer."""
    identity = identity_of(request)
    if not identity.is_admin:
        raise web.HTTPForbidden(text="refused: viewers cannot change anything")
    return identity


def build_app(console: Console) -> web.Application:
    from .actions import add_routes as add_actions
    from .pages import add_routes as add_pages
    from .signin import add_routes as add_signin

    # Bodies are read by the handlers (uploads are streamed to disk), so no overall cap here.
    app = web.Application(middlewares=[sessions, csrf_and_roles, refusals], client_max_size=1024 * 1024)
    app[CONSOLE] = console
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/console", _to_campaigns)
    app.router.add_static("/console/static/", STATIC_DIR, append_version=False)
    for add in (add_signin, add_pages, add_actions):
        add(app.router)
    return app


async def _to_campaigns(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/console/")


class ConsoleServer:
    """Started and stopped by the daemon beside (never on) the callbacks server."""

    def __init__(self, repo: Repository, settings: SettingsSource) -> None:
        self.console = Console(repo, settings)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._runner = web.AppRunner(build_app(self.console), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port))
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("web console at http://%s:%s/console/", host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def session_lifetime(settings: Settings) -> timedelta:
    return timedelta(hours=settings.console.session_hours)
