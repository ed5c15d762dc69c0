"""Helpers for the console's tests: an app on a repository, users, signing in, CSRF tokens."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager

from aiohttp import CookieJar
from aiohttp.test_utils import TestClient, TestServer

from scheduler.config import Settings
from scheduler.console.app import Console, build_app
from scheduler.console.passwords import hash_password
from scheduler.repository import Repository, utcnow

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def add_user(repo: Repository, name: str, role: str, password: str = PASSWORD) -> None:
    await repo.add_user(name, role, hash_password(password), utcnow())


@asynccontextmanager
async def console_client(repo: Repository, settings: Settings | None = None):
    """A console app on ``repo`` (as one daemon serves it), with a cookie jar of its own."""
    settings = settings or Settings()
    client = TestClient(TestServer(build_app(Console(repo, lambda: settings))), cookie_jar=CookieJar(unsafe=True))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Signs in and returns the CSRF token of the campaigns page."""
    response = await client.post("/console/login", data={"username": name, "password": password},
                                 allow_redirects=False)
    assert response.status == 303, await response.text()
    return await csrf_token(client)


async def csrf_token(client: TestClient, path: str = "/console/") -> str:
    page = await client.get(path)
    assert page.status == 200, await page.text()
    found = CSRF.search(await page.text())
    assert found, "no CSRF token on the page"
    return found.group(1)
