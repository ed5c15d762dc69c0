"""Signing in and out. The password is checked with argon2 in a thread (it takes tens of
milliseconds of CPU the daemon's loop must not lose); the throttle lives in the database."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..repository import utcnow
from . import auth
from .app import console_of, identity_of, session_lifetime
from .passwords import verify_password

log = logging.getLogger("scheduler.console")
MAX_FIELD_CHARS = 1024
MAX_NAME_CHARS = 100  # console_users.name


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/login", login_page)
    router.add_post("/console/login", login)
    router.add_post("/console/logout", logout)


async def login_page(request: web.Request) -> web.Response:
    return console_of(request).render(request, "login.html", message=None, username="")


async def login(request: web.Request) -> web.Response:
    """303 to the campaigns with a session cookie; 401 (the form again) for a wrong name or
    password; 429 once the user has more than five failures within a minute."""
    console = console_of(request)
    form = await request.post()
    username, password = str(form.get("username", ""))[:MAX_FIELD_CHARS], str(form.get("password", ""))
    now = utcnow()
    # A name longer than any user's (the CLI allows 100 characters) is nobody; its first 100
    # characters name its throttle.
    ticket = await console.repo.begin_login_attempt(username[:MAX_NAME_CHARS], now, auth.LOGIN_WINDOW,
                                                    auth.LOGIN_FAILURE_LIMIT)
    if ticket.attempt_id is None:
        log.warning("console: sign-in for %r refused: too many failures within a minute", username)
        response = console.render(request, "login.html", status=429, username=username,
                                  message=f"Too many failed sign-ins for this user: try again in "
                                          f"{ticket.retry_after_seconds} s.")
        response.headers["Retry-After"] = str(ticket.retry_after_seconds)
        return response
    user = await console.repo.user_by_name(username) if len(username) <= MAX_NAME_CHARS else None
    if not await asyncio.to_thread(verify_password, user.password_hash if user else None, password):
        log.warning("console: failed sign-in for %r", username)
        return console.render(request, "login.html", status=401, username=username,
                              message="Wrong user name or password.")
    assert user is not None
    await console.repo.login_succeeded(ticket.attempt_id)
    token, csrf = auth.new_token(), auth.new_token()
    lifetime = session_lifetime(console.settings())
    await console.repo.create_session(user.id, auth.token_hash(token), csrf, now, now + lifetime)
    log.info("console: %s signed in (%s)", user.name, user.role)
    response = web.HTTPSeeOther("/console/")
    response.set_cookie(auth.COOKIE_NAME, token, **auth.cookie_options(  # type: ignore[arg-type]
        console.settings().console.secure_cookie, int(lifetime.total_seconds())))
    raise response


async def logout(request: web.Request) -> web.Response:
    identity = identity_of(request)
    await console_of(request).repo.end_session(identity.token_sha256)
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(auth.COOKIE_NAME, path=auth.COOKIE_PATH)
    raise response
