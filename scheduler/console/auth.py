"""Sessions, CSRF tokens and the sign-in throttle's rules (pure, no I/O).

A session is a random token in a cookie; the database keeps only its SHA-256, so the
sessions table signs nobody in. Each session has its own CSRF token, sent back by every
form and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

COOKIE_NAME = "insight_console_session"
COOKIE_PATH = "/console/"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# More than this many failed sign-ins for one user within the window: 429 (on every daemon).
LOGIN_FAILURE_LIMIT = 5
LOGIN_WINDOW = timedelta(minutes=1)
TOKEN_BYTES = 32


@dataclass(frozen=True)
class Identity:
    """Who sent the request: the signed-in user and their session."""

    name: str
    role: str
    csrf_token: str
    token_sha256: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_ok(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def cookie_options(secure: bool, max_age_seconds: int) -> dict[str, object]:
    """HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), Secure
    when the console is behind https (``console.secure_cookie``)."""
    options: dict[str, object] = {"path": COOKIE_PATH, "httponly": True, "samesite": "Strict",
                                  "max_age": max_age_seconds}
    if secure:
        options["secure"] = True
    return options


def foreign_origin(origin: str | None, host: str | None) -> bool:
    """A browser names the page a POST came from; one from another host is refused even with a
    token (an https proxy may change the scheme, so only host and port are compared)."""
    if not origin or origin == "null":  # no say (privacy settings send "null"): the token decides
        return False
    return urlsplit(origin).netloc.lower() != (host or "").lower()
