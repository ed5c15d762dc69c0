"""All HTTP to Plum Insight, and what each answer means.

``InsightClient.bulk_queue`` never raises for an HTTP outcome: every call ends
as a ``SubmitResult`` whose ``outcome`` says what the caller may do next.
aiohttp's exceptions stop here.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import logging
import re
import time
import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from .config import InsightSettings
from .errors import InvalidRequest
from .models import Outcome
from .rules import WaitBounds, attempt_problems

log = logging.getLogger("scheduler.insight")

MAX_BODY_BYTES = 64 * 1024
EXCERPT_CHARS = 500
CSV_FILENAME = "contacts.csv"


@dataclass(frozen=True)
class BulkQueueRequest:
    survey_id: str
    instance_id: str
    csv_bytes: bytes
    start_timestamp: int | None = None
    end_timestamp: int | None = None
    max_attempts: int | None = None
    reattempt_wait: int | None = None
    result_url: str | None = None

    def form_fields(self) -> dict[str, str]:
        """The form fields besides the CSV, unset ones omitted; Unix seconds as strings."""
        values = {
            "start_timestamp": self.start_timestamp,
            "end_timestamp": self.end_timestamp,
            "max_attempts": self.max_attempts,
            "reattempt_wait": self.reattempt_wait,
            "result_url": self.result_url,
        }
        return {name: str(value) for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class Answer:
    """What Plum's body said, whatever form it took."""

    success: bool | None = None
    error: str | None = None


@dataclass(frozen=True)
class SubmitResult:
    outcome: Outcome
    status_code: int | None
    error: str | None
    excerpt: str | None
    latency_seconds: float
    retry_after_seconds: float | None = None


# -- parsing Plum's answer (pure) ----------------------------------------------

_SUCCESS_RE = re.compile(r"""["']?success["']?\s*:\s*["']?(true|false|1|0)\b""", re.IGNORECASE)
_ERROR_RE = re.compile(r"""["']?error["']?\s*:\s*(["'])(.*?)(?<!\\)\1""", re.IGNORECASE | re.DOTALL)


def parse_answer(body: str) -> Answer:
    """Real JSON, the documentation's single-quoted form, or the XML form."""
    text = body.strip()
    if not text:
        return Answer()
    if text.startswith("<"):
        return _parse_xml(text)
    try:
        data = json.loads(text)
    except ValueError:
        return _parse_loose(text)
    if not isinstance(data, dict):
        return Answer()
    success = data.get("success")
    error = data.get("error")
    return Answer(success=success if isinstance(success, bool) else None, error=None if error is None else str(error))


def _parse_loose(text: str) -> Answer:
    success = _SUCCESS_RE.search(text)
    error = _ERROR_RE.search(text)
    return Answer(
        success=None if success is None else success.group(1).lower() in ("true", "1"),
        error=None if error is None else error.group(2),
    )


def _parse_xml(text: str) -> Answer:
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return Answer()
    success_text = (root.findtext("success") or "").strip().lower()
    error = root.findtext("error")
    success = {"true": True, "1": True, "false": False, "0": False}.get(success_text)
    return Answer(success=success, error=error.strip() if error else None)


def classify(status_code: int, answer: Answer) -> Outcome:
    """The client issue's table: what an HTTP answer means for the chunk."""
    if 200 <= status_code < 300:
        return Outcome.REJECTED if answer.success is False else Outcome.ACCEPTED
    if status_code in (401, 403):
        return Outcome.AUTH
    if status_code in (404, 409):
        return Outcome.CAMPAIGN_INVALID
    if status_code in (405, 415) or 300 <= status_code < 400:
        # A redirect means base_url points at the wrong place; we never follow
        # one with a POST body.
        return Outcome.CLIENT_BUG
    if status_code in (429, 500, 503):
        return Outcome.RETRYABLE
    if 400 <= status_code < 500:
        return Outcome.REJECTED
    return Outcome.UNKNOWN


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date; None if absent or garbage."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


def excerpt(body: str) -> str:
    return body if len(body) <= EXCERPT_CHARS else body[:EXCERPT_CHARS] + "..."


# -- checking a request before anything is sent (pure) --------------------------


def check_request(request: BulkQueueRequest, settings: InsightSettings) -> None:
    """The API's own rules; raises InvalidRequest naming the field."""
    for name in ("survey_id", "instance_id"):
        if not str(getattr(request, name) or "").strip():
            raise InvalidRequest(name, "must not be empty")
    if request.max_attempts is not None:
        bounds = WaitBounds(settings.reattempt_wait_min_seconds, settings.reattempt_wait_max_seconds)
        for problem in attempt_problems(request.max_attempts, request.reattempt_wait, bounds):
            field, rule = problem.split(": ", 1)
            raise InvalidRequest(field, rule)
    if request.start_timestamp is not None and request.end_timestamp is not None:
        if request.end_timestamp <= request.start_timestamp:
            raise InvalidRequest("end_timestamp", "must be after start_timestamp")
    _check_csv(request.csv_bytes, settings.phone_column)


_NOT_SPACE = re.compile(rb"\S")


def _check_csv(data: bytes, phone_column: str) -> None:
    # Looks at the header line and for one more character, without copying the rest (a chunk
    # of 1,000 contacts is ~60 KB, checked before every request).
    if _NOT_SPACE.search(data) is None:
        raise InvalidRequest("csv", "must not be empty")
    end = data.find(b"\n")
    try:
        first_line = (data if end < 0 else data[:end]).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("csv", "must be UTF-8 text") from None
    header = next(csv.reader(io.StringIO(first_line)), [])
    if not header or header[0].strip() != phone_column:
        found = header[0] if header else ""
        raise InvalidRequest("csv", f"first header must be {phone_column!r} (found {found!r})")
    if end < 0 or _NOT_SPACE.search(data, end + 1) is None:
        raise InvalidRequest("csv", "has a header but no contacts")


def multipart_body(request: BulkQueueRequest) -> tuple[str, bytes]:
    """The request's multipart/form-data body (the CSV as a file, then the other fields) and its
    Content-Type. Written out as bytes: aiohttp's FormData machinery cost more CPU than the
    rest of sending a request; plain bytes can also be sent again as they are."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="csv"; filename="{CSV_FILENAME}"\r\n'
             f"Content-Type: text/csv\r\n\r\n".encode("ascii"), request.csv_bytes, b"\r\n"]
    for name, value in request.form_fields().items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode("ascii"))
        parts += [value.encode("utf-8"), b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


# -- the client ------------------------------------------------------------------


class InsightClient:
    """One aiohttp session for the process, pool sized to the concurrency limit."""

    def __init__(self, settings: InsightSettings, *, max_concurrency: int) -> None:
        self.settings = settings
        self._max_concurrency = max_concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "InsightClient":
        self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def open(self) -> None:
        if self._session is not None:
            return
        # A fresh connection per request: reusing a keep-alive connection the
        # server has just closed fails after our body may have been read, which
        # would turn a harmless race into an "unknown" chunk.
        connector = aiohttp.TCPConnector(limit=self._max_concurrency, force_close=True, ssl=True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout())

    def _timeout(self) -> aiohttp.ClientTimeout:
        connect = min(self.settings.connect_timeout_seconds, self.settings.timeout_seconds)
        return aiohttp.ClientTimeout(total=self.settings.timeout_seconds, connect=connect, sock_connect=connect)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reconfigure(self, settings: InsightSettings) -> None:
        """New credentials or timeouts apply to the next request (SIGHUP)."""
        self.settings = settings

    def url(self, survey_id: str, instance_id: str) -> str:
        return f"{self.settings.base_url.rstrip('/')}/surveys/{survey_id}/{instance_id}/bulk_queue"

    def _authorization(self) -> str:
        secret = f"{self.settings.username}:{self.settings.developer_key.get_secret_value()}"
        return "Basic " + base64.b64encode(secret.encode("utf-8")).decode("ascii")

    async def bulk_queue(self, request: BulkQueueRequest, on_sent: Callable[[], None] | None = None) -> SubmitResult:
        """POST the request; ``on_sent`` is called the moment it has been written (when it has
        left, as far as this host can tell: see _LeavingBody)."""
        check_request(request, self.settings)
        self.open()
        assert self._session is not None
        content_type, form = multipart_body(request)
        started = time.monotonic()
        try:
            async with self._session.post(
                self.url(request.survey_id, request.instance_id),
                data=_LeavingBody(form, content_type, on_sent),
                headers={"Accept": "application/json", "Authorization": self._authorization(),
                         "Content-Type": content_type},
                allow_redirects=False,
                timeout=self._timeout(),
            ) as response:
                body = await _read_bounded(response)
                return _result_from_response(response, body, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome
            return result_from_exception(exc, time.monotonic() - started)


class _LeavingBody(aiohttp.BytesPayload):
    """The request's body, carrying ``on_sent``: called once its bytes (headers and body, which
    aiohttp writes together) are in the kernel's hands. Not earlier: on Python 3.11 aiohttp
    writes them in a task of its own, which a busy event loop may run milliseconds after the
    connection is made, and a late request must be known to be late (the dispatcher then moves
    the account's rate schedule). A TraceConfig could tell a moment too, but tracing cost ~15%
    of a request's CPU (issue 15)."""

    def __init__(self, body: bytes, content_type: str, on_sent: Callable[[], None] | None) -> None:
        super().__init__(body, content_type=content_type)
        self._on_sent = on_sent

    async def write(self, writer: AbstractStreamWriter) -> None:
        await super().write(writer)
        self._leaving()

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self._leaving()

    def _leaving(self) -> None:
        on_sent, self._on_sent = self._on_sent, None
        if on_sent is None:
            return
        try:
            on_sent()
        except Exception:  # noqa: BLE001 - bookkeeping must never turn a request into an unknown outcome
            log.exception("after sending a request")


async def _read_bounded(response: aiohttp.ClientResponse) -> str:
    data = await response.content.read(MAX_BODY_BYTES)
    return data.decode("utf-8", errors="replace")


def _result_from_response(response: aiohttp.ClientResponse, body: str, latency: float) -> SubmitResult:
    answer = parse_answer(body)
    outcome = classify(response.status, answer)
    retry_after = None
    if outcome is Outcome.RETRYABLE:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(timezone.utc))
    error = answer.error
    if error is None and outcome is not Outcome.ACCEPTED:
        error = f"HTTP {response.status} {response.reason or ''}".strip()
    return SubmitResult(outcome, response.status, error, excerpt(body), latency, retry_after)


def result_from_exception(exc: BaseException, latency: float) -> SubmitResult:
    """Before the connection was made nothing was sent (retryable); after it, unknown."""
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return SubmitResult(Outcome.RETRYABLE, None, f"not sent: {_describe(exc)}", None, latency)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ClientError, OSError)):
        return SubmitResult(Outcome.UNKNOWN, None, f"outcome unknown: {_describe(exc)}", None, latency)
    return SubmitResult(Outcome.UNKNOWN, None, f"outcome unknown: unexpected {_describe(exc)}", None, latency)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError) and not str(exc):
        return "timed out waiting for the answer"
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - describing an error must not raise another
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
