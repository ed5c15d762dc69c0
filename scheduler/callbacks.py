"""Call results Plum POSTs to result_url: signed URLs, and reading the body.

Pure functions; the HTTP server that uses them is in ``web.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

SIGNATURE_PARAM = "sig"
PHONE_FIELDS = ("phone_number", "destination", "phone", "number")


def callback_path(campaign_id: int, chunk_id: int) -> str:
    return f"/callbacks/{campaign_id}/{chunk_id}"


def sign(secret: str, path: str) -> str:
    return hmac.new(secret.encode("utf-8"), path.encode("utf-8"), hashlib.sha256).hexdigest()


def signed_url(public_url: str, secret: str, campaign_id: int, chunk_id: int) -> str:
    path = callback_path(campaign_id, chunk_id)
    return f"{public_url.rstrip('/')}{path}?{SIGNATURE_PARAM}={sign(secret, path)}"


def signature_ok(secret: str, path: str, given: str | None) -> bool:
    """Constant-time comparison, so the signature cannot be guessed byte by byte."""
    return bool(given) and hmac.compare_digest(sign(secret, path), given or "")


@dataclass(frozen=True)
class CallDetails:
    status: str | None
    attempts: int | None
    duration_seconds: int | None
    queued_timestamp: int | None
    last_attempt_timestamp: int | None
    phone: str | None


class MalformedCallback(ValueError):
    """The body is not a call_details object we can read."""


def parse_call_details(body: bytes, content_type: str) -> CallDetails:
    """The call_details object, sent as JSON or form-encoded."""
    fields = _decode(body, content_type)
    status = _text(fields.get("status"))
    if status is None:
        raise MalformedCallback("no status in the call details")
    phone = next((_text(fields[name]) for name in PHONE_FIELDS if _text(fields.get(name))), None)
    return CallDetails(
        status=status.lower(),
        attempts=_integer(fields, "attempts"),
        duration_seconds=_integer(fields, "duration"),
        queued_timestamp=_integer(fields, "queued_timestamp"),
        last_attempt_timestamp=_integer(fields, "last_attempt_timestamp"),
        phone=phone,
    )


def _decode(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCallback("the body is not UTF-8") from None
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MalformedCallback(f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedCallback("the JSON body is not an object")
        return data
    return {key: values[-1] for key, values in parse_qs(text, keep_blank_values=True).items()}


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _integer(fields: dict[str, Any], name: str) -> int | None:
    value = _text(fields.get(name))
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        raise MalformedCallback(f"{name} is not a number: {value!r}") from None
