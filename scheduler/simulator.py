"""An Insight stand-in (aiohttp server) that behaves as Plum's documentation says.

Tests, the demo and benchmarks talk to this on loopback, never to Plum. It
records every request and every queued contact; ``GET /_stats`` is the
ground truth later tests compare against. Faults are switched on one by one.

An outage (``outage_status``) is one window of time, not a probability: it
begins when request number ``outage_after_requests + 1`` arrives, lasts
``outage_seconds``, and every valid request that arrives inside it gets that
status and queues nothing; afterwards the simulator answers normally again.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import csv
import io
import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml
from aiohttp import BodyPartReader, web

log = logging.getLogger("scheduler.simulator")

BULK_QUEUE_PATH = "/api/surveys/{survey_id}/{instance_id}/bulk_queue"
ATTEMPTS_MESSAGE = "attempts can only be an integer between 1 and 10."
OUTAGE_MESSAGES = {429: "too many requests", 500: "database error", 503: "service unavailable"}


@dataclass
class SimulatorSettings:
    username: str = "you@yourdomain.com"
    developer_key: str = ""
    phone_column: str = "phone_number"
    # survey_id -> current instance_id; empty accepts any survey and instance.
    surveys: dict[str, str] = field(default_factory=dict)
    expired_surveys: list[str] = field(default_factory=list)
    answer_style: str = "json"  # json | xml (by Accept) | doc: the documentation's {'success':true}
    fail_rate: float = 0.0  # probability of HTTP 500 (nothing queued)
    fail_first: int = 0  # the first K valid requests get HTTP 500
    unavailable_rate: float = 0.0  # probability of 503 with Retry-After
    retry_after_seconds: int = 1
    latency_mean_seconds: float = 0.0
    latency_jitter_seconds: float = 0.0  # uniform +/- around the mean
    hang_rate: float = 0.0  # probability of queuing, then not answering for hang_seconds
    hang_seconds: float = 60.0
    drop_rate: float = 0.0  # probability of queuing, then dropping the connection unanswered
    reject_numbers: list[str] = field(default_factory=list)  # a chunk holding one gets 400
    # Answer every valid request with exactly this (for codes the rules above never produce).
    fixed_status: int | None = None
    fixed_body: str = ""
    fixed_headers: dict[str, str] = field(default_factory=dict)
    fixed_queues: bool = False  # whether a fixed answer still queued the calls
    callback_delay_seconds: float | None = None  # POST call_details to result_url when set
    callback_mix: dict[str, float] = field(default_factory=lambda: {"completed": 0.8, "failed": 0.15, "canceled": 0.05})
    callback_include_phone: bool = True
    # One outage window: every valid request arriving inside it gets outage_status, nothing queued.
    outage_status: int | None = None  # e.g. 503, 500, 429; None: no outage
    outage_seconds: float = 0.0  # how long the outage lasts
    outage_after_requests: int = 0  # begins at the arrival of request number N+1 (0: the first)
    outage_retry_after_seconds: int | None = None  # Retry-After on outage answers with 429 or 503
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.outage_status is not None and not (
                isinstance(self.outage_status, int) and 400 <= self.outage_status <= 599):
            raise ValueError(f"outage_status must be an HTTP error status (400-599), not {self.outage_status!r}")
        if self.outage_seconds < 0:
            raise ValueError(f"outage_seconds must not be negative, not {self.outage_seconds!r}")
        if self.outage_after_requests < 0:
            raise ValueError(f"outage_after_requests must not be negative, not {self.outage_after_requests!r}")
        if self.outage_retry_after_seconds is not None and self.outage_retry_after_seconds < 0:
            raise ValueError(
                f"outage_retry_after_seconds must not be negative, not {self.outage_retry_after_seconds!r}")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "SimulatorSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown simulator settings: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: Path) -> "SimulatorSettings":
        return cls.from_mapping(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


@dataclass
class RecordedRequest:
    started: float  # time.time() when the handler began
    survey_id: str
    instance_id: str
    status: int = 0
    username: str | None = None
    password: str | None = None
    accept: str = ""
    content_type: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    csv_filename: str | None = None
    csv_content_type: str | None = None
    csv_text: str | None = None
    numbers: list[str] = field(default_factory=list)
    queued: bool = False
    fault: str | None = None


class InsightSimulator:
    def __init__(self, settings: SimulatorSettings | None = None) -> None:
        self.settings = settings or SimulatorSettings()
        self.rand = random.Random(self.settings.seed)
        self.requests: list[RecordedRequest] = []
        self.queued_numbers: Counter[str] = Counter()
        self.callbacks_sent = 0
        self.callback_failures = 0
        self._valid_requests = 0
        self._in_flight = 0
        self.max_in_flight = 0
        # The outage clock: when the outage began (time.time()), and how many
        # requests had arrived when it was last (re)armed.
        self._outage_started_at: float | None = None
        self._outage_baseline = 0
        self._background: set[asyncio.Task[None]] = set()
        self._client: Any = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", BULK_QUEUE_PATH, self.handle_bulk_queue)
        app.router.add_get("/_stats", self.handle_stats)
        app.router.add_get("/_requests", self.handle_requests)
        app.router.add_post("/_control", self.handle_control)
        app.router.add_post("/_reset", self.handle_reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self) -> None:
        self.requests.clear()
        self.queued_numbers.clear()
        self._valid_requests = 0
        self.max_in_flight = 0
        self.callbacks_sent = self.callback_failures = 0
        self._rearm_outage()

    def _rearm_outage(self) -> None:
        """The outage begins afresh, counting requests from now."""
        self._outage_started_at = None
        self._outage_baseline = len(self.requests)

    # -- the API ---------------------------------------------------------------

    async def handle_bulk_queue(self, request: web.Request) -> web.StreamResponse:
        record = RecordedRequest(
            started=time.time(),
            survey_id=request.match_info["survey_id"],
            instance_id=request.match_info["instance_id"],
            accept=request.headers.get("Accept", ""),
            content_type=request.headers.get("Content-Type", ""),
        )
        self.requests.append(record)
        self._maybe_start_outage(record)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return await self._answer(request, record)
        finally:
            self._in_flight -= 1

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        refusal = await self._validate(request, record)
        if refusal is not None:
            return self._reply(request, record, *refusal)
        if self._in_outage(record.started):
            return self._outage(request, record)
        self._valid_requests += 1
        ordinal = self._valid_requests
        await self._sleep_latency()
        if self.settings.fixed_status is not None:
            return self._fixed(record)
        fault = self._pick_fault(ordinal)
        record.fault = fault
        if fault == "fail":
            return self._reply(request, record, 500, "database error")
        if fault == "unavailable":
            response = self._reply(request, record, 503, "service unavailable")
            response.headers["Retry-After"] = str(self.settings.retry_after_seconds)
            return response
        self._queue(record)
        if fault == "hang":
            await asyncio.sleep(self.settings.hang_seconds)
        if fault == "drop":
            record.status = 0
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # the handler ends without an answer
        return self._reply(request, record, 200, None)

    async def _validate(self, request: web.Request, record: RecordedRequest) -> tuple[int, str] | None:
        if request.method != "POST":
            return 405, "invalid HTTP method supplied (only POST allowed)"
        record.username, record.password = _basic_auth(request.headers.get("Authorization", ""))
        if (record.username, record.password) != (self.settings.username, self.settings.developer_key):
            return 401, "authentication headers were invalid or the account is inactive"
        if not record.content_type.startswith("multipart/form-data"):
            return 415, "unsupported media type"
        survey_problem = self._survey_problem(record)
        if survey_problem is not None:
            return survey_problem
        await self._read_form(request, record)
        return self._form_problem(record)

    def _survey_problem(self, record: RecordedRequest) -> tuple[int, str] | None:
        if record.survey_id in self.settings.expired_surveys:
            return 409, "survey deployment has expired"
        surveys = self.settings.surveys
        if not surveys:
            return None
        if record.survey_id not in surveys:
            return 404, "survey was not found"
        if surveys[record.survey_id] != record.instance_id:
            return 409, "instance_id supplied did not match the current deployment"
        return None

    async def _read_form(self, request: web.Request, record: RecordedRequest) -> None:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):  # nested multipart: not what Insight takes
                continue
            if part.name == "csv":
                record.csv_filename = part.filename
                record.csv_content_type = part.headers.get("Content-Type")
                record.csv_text = (await part.read()).decode("utf-8", errors="replace")
            elif part.name:
                record.fields[part.name] = await part.text()

    def _form_problem(self, record: RecordedRequest) -> tuple[int, str] | None:
        if not record.csv_text or record.csv_filename is None:
            return 400, "uploaded CSV was invalid or not supplied"
        attempts = record.fields.get("max_attempts", "1")
        if not attempts.isdigit() or not 1 <= int(attempts) <= 10:
            return 400, ATTEMPTS_MESSAGE
        if int(attempts) > 1 and not record.fields.get("reattempt_wait", "").isdigit():
            return 400, "reattempt_wait is required when max_attempts is greater than one"
        for name in ("start_timestamp", "end_timestamp"):
            if name in record.fields and not record.fields[name].isdigit():
                return 400, f"{name} must be a Unix timestamp"
        rows = list(csv.reader(io.StringIO(record.csv_text.lstrip("\ufeff"))))
        if not rows or not rows[0] or rows[0][0] != self.settings.phone_column or len(rows) < 2:
            return 400, "uploaded CSV was invalid or not supplied"
        record.numbers = [row[0] for row in rows[1:] if row]
        rejected = set(self.settings.reject_numbers)
        refused = [n for n in record.numbers if n in rejected]
        if refused:
            return 400, f"invalid phone number: {refused[0]}"
        return None

    async def _sleep_latency(self) -> None:
        mean, jitter = self.settings.latency_mean_seconds, self.settings.latency_jitter_seconds
        if mean > 0 or jitter > 0:
            await asyncio.sleep(max(0.0, mean + self.rand.uniform(-jitter, jitter)))

    def _pick_fault(self, ordinal: int) -> str | None:
        s = self.settings
        if ordinal <= s.fail_first:
            return "fail"
        roll = self.rand.random()
        for name, rate in (("fail", s.fail_rate), ("unavailable", s.unavailable_rate),
                           ("hang", s.hang_rate), ("drop", s.drop_rate)):
            if roll < rate:
                return name
            roll -= rate
        return None

    def _maybe_start_outage(self, record: RecordedRequest) -> None:
        if self.settings.outage_status is None or self._outage_started_at is not None:
            return
        if len(self.requests) - self._outage_baseline > self.settings.outage_after_requests:
            self._outage_started_at = record.started

    def _outage_window(self) -> tuple[float, float] | None:
        if self._outage_started_at is None:
            return None
        return self._outage_started_at, self._outage_started_at + self.settings.outage_seconds

    def _in_outage(self, started: float) -> bool:
        window = self._outage_window()
        return self.settings.outage_status is not None and window is not None and window[0] <= started < window[1]

    def _outage(self, request: web.Request, record: RecordedRequest) -> web.Response:
        status = self.settings.outage_status or 503
        record.fault = "outage"
        response = self._reply(request, record, status, OUTAGE_MESSAGES.get(status) or _phrase(status))
        retry_after = self.settings.outage_retry_after_seconds
        if retry_after is not None and status in (429, 503):
            response.headers["Retry-After"] = str(retry_after)
        return response

    def _queue(self, record: RecordedRequest) -> None:
        record.queued = True
        self.queued_numbers.update(record.numbers)
        if self.settings.callback_delay_seconds is not None and record.fields.get("result_url"):
            task = asyncio.get_running_loop().create_task(self._send_callbacks(record))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _fixed(self, record: RecordedRequest) -> web.Response:
        s = self.settings
        record.status = s.fixed_status or 200
        record.fault = "fixed"
        if s.fixed_queues:
            self._queue(record)
        return web.Response(status=record.status, text=s.fixed_body, headers=s.fixed_headers)

    def _reply(self, request: web.Request, record: RecordedRequest, status: int, error: str | None) -> web.Response:
        record.status = status
        wants_xml = "xml" in request.headers.get("Accept", "") and "json" not in request.headers.get("Accept", "")
        if self.settings.answer_style == "xml" or (wants_xml and self.settings.answer_style != "doc"):
            body = "<result><success>%s</success>%s</result>" % (
                "true" if error is None else "false",
                "" if error is None else f"<error>{error}</error>",
            )
            return web.Response(status=status, text=body, content_type="application/xml")
        if self.settings.answer_style == "doc":
            body = "{'success':true}" if error is None else "{'success':false,'error':'%s'}" % error
            return web.Response(status=status, text=body, content_type="application/json")
        payload: dict[str, Any] = {"success": error is None}
        if error is not None:
            payload["error"] = error
        return web.json_response(payload, status=status)

    # -- call results ----------------------------------------------------------

    async def _send_callbacks(self, record: RecordedRequest) -> None:
        import aiohttp

        await asyncio.sleep(self.settings.callback_delay_seconds or 0)
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        url = record.fields["result_url"]
        for number in record.numbers:
            try:
                async with self._client.post(url, json=self.call_details(record, number)) as response:
                    await response.read()
                self.callbacks_sent += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.callback_failures += 1

    def call_details(self, record: RecordedRequest, number: str) -> dict[str, Any]:
        statuses, weights = zip(*self.settings.callback_mix.items())
        status = self.rand.choices(statuses, weights)[0]
        now = int(time.time())
        details: dict[str, Any] = {
            "status": status,
            "attempts": 1,
            "max_attempts": int(record.fields.get("max_attempts", "1")),
            "queued_timestamp": int(record.started),
            "last_attempt_timestamp": now,
            "start_timestamp": int(record.fields.get("start_timestamp", record.started)),
            "end_timestamp": int(record.fields.get("end_timestamp", now)),
            "reattempt_wait": int(record.fields.get("reattempt_wait", "0") or 0),
            "events": [{"event": "queued", "timestamp": int(record.started)}, {"event": status, "timestamp": now}],
        }
        if status == "completed":
            details["duration"] = self.rand.randint(20, 300)
        if self.settings.callback_include_phone:
            details["phone_number"] = number
        return details

    # -- ground truth ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        codes = Counter(str(r.status) for r in self.requests)
        window = self._outage_window()
        return {
            "requests": len(self.requests),
            "by_status": dict(codes),
            "contacts_queued": sum(self.queued_numbers.values()),
            "distinct_numbers_queued": len(self.queued_numbers),
            "numbers_queued_more_than_once": sum(1 for n in self.queued_numbers.values() if n > 1),
            "largest_chunk": max((len(r.numbers) for r in self.requests), default=0),
            "max_in_flight": self.max_in_flight,
            "max_started_in_one_second": max_in_window([r.started for r in self.requests], 1.0),
            "first_request_at": min((r.started for r in self.requests), default=None),
            "last_request_at": max((r.started for r in self.requests), default=None),
            "callbacks_sent": self.callbacks_sent,
            "callback_failures": self.callback_failures,
            "outage_started_at": None if window is None else window[0],
            "outage_ended_at": None if window is None else window[1],
            "requests_during_outage": 0 if window is None else sum(
                1 for r in self.requests if window[0] <= r.started < window[1]),
            "first_accepted_after_outage": None if window is None else min(
                (r.started for r in self.requests if r.status == 200 and r.started >= window[1]), default=None),
        }

    async def handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def handle_requests(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.requests])

    async def handle_control(self, request: web.Request) -> web.Response:
        """Change settings at run time, e.g. ``{"developer_key": "fixed"}``."""
        changes = await request.json()
        try:
            self.settings = SimulatorSettings.from_mapping({**asdict(self.settings), **changes})
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if any(name.startswith("outage_") for name in changes):
            self._rearm_outage()
        return web.json_response(asdict(self.settings) | {"developer_key": "***"})

    async def handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})


def max_in_window(times: list[float], window_seconds: float) -> int:
    """Most events whose times fall within any half-open window of this length."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window_seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "service outage"


def _basic_auth(header: str) -> tuple[str | None, str | None]:
    if not header.lower().startswith("basic "):
        return None, None
    try:
        user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    return user, password


async def serve_forever(settings: SimulatorSettings, host: str, port: int) -> None:
    # The simulator is also the measuring instrument (requests per second): a
    # garbage-collection pause would make it stamp queued requests together.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    simulator = InsightSimulator(settings)
    url = await simulator.start(host, port)
    print(f"Insight simulator listening: base_url {url.replace('127.0.0.1', host)}  (stats: GET /_stats)", flush=True)
    print(json.dumps(asdict(settings) | {"developer_key": "***"}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
