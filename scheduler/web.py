"""The daemon's HTTP server: call results from Plum, health checks, metrics."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Awaitable, Callable

from aiohttp import web

from .callbacks import SIGNATURE_PARAM, CallDetails, MalformedCallback, callback_path, parse_call_details, signature_ok
from .config import Settings
from .errors import DatabaseError
from .metrics import Metrics
from .phones import Normaliser
from .repository import Repository, utcnow

log = logging.getLogger("scheduler.web")

Readiness = Callable[[], Awaitable[list[str]]]
Details = Callable[[], dict[str, object]]


class WebServer:
    def __init__(self, repo: Repository, settings: Settings, metrics: Metrics, readiness: Readiness,
                 details: Details | None = None) -> None:
        self.repo = repo
        self.details = details or dict
        self.settings = settings
        self.metrics = metrics
        self.readiness = readiness
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.callbacks.max_body_bytes)
        app.router.add_get("/callbacks/{campaign_id:\\d+}/{chunk_id:\\d+}", self.probe)
        app.router.add_post("/callbacks/{campaign_id:\\d+}/{chunk_id:\\d+}", self.receive)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port))
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("listening on %s:%s (callbacks, /healthz, /readyz, /metrics)", host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- call results ------------------------------------------------------------

    async def probe(self, request: web.Request) -> web.Response:
        """Plum may GET the result_url before dialling and expects 200."""
        return web.Response(text="ok")

    async def receive(self, request: web.Request) -> web.Response:
        campaign_id, chunk_id = int(request.match_info["campaign_id"]), int(request.match_info["chunk_id"])
        refused = self._refusal(request, campaign_id, chunk_id)
        if refused is not None:
            return refused
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.callbacks.labels(status="too_large").inc()
            log.warning("callback for chunk %s refused: body over %s bytes", chunk_id,
                        self.settings.callbacks.max_body_bytes)
            return web.json_response({"error": "body too large"}, status=413)
        try:
            details = parse_call_details(body, request.content_type)
        except MalformedCallback as exc:
            self.metrics.callbacks.labels(status="malformed").inc()
            log.warning("callback for chunk %s refused: %s", chunk_id, exc)
            return web.json_response({"error": str(exc)}, status=400)
        return await self._store(campaign_id, chunk_id, details, body)

    def _refusal(self, request: web.Request, campaign_id: int, chunk_id: int) -> web.Response | None:
        secret = self.settings.callbacks.secret.get_secret_value()
        if secret and not signature_ok(secret, callback_path(campaign_id, chunk_id),
                                       request.query.get(SIGNATURE_PARAM)):
            self.metrics.callbacks.labels(status="bad_signature").inc()
            log.warning("callback for chunk %s refused: missing or wrong signature", chunk_id)
            return web.json_response({"error": "bad signature"}, status=403)
        if request.content_length is not None and request.content_length > self.settings.callbacks.max_body_bytes:
            self.metrics.callbacks.labels(status="too_large").inc()
            return web.json_response({"error": "body too large"}, status=413)
        return None

    async def _store(self, campaign_id: int, chunk_id: int, details: CallDetails, body: bytes) -> web.Response:
        phone = None
        if details.phone:
            phone = Normaliser(self.settings.contacts.default_region)(details.phone)[0]
        try:
            stored = await self.repo.store_call_result(campaign_id, chunk_id, details,
                                                       body.decode("utf-8"), phone, utcnow())
        except DatabaseError as exc:
            log.error("callback for chunk %s not stored: %s", chunk_id, exc)
            return web.json_response({"error": "try again"}, status=503)
        if stored == "reconciled":
            log.warning("campaign %s chunk %s: was unknown; a call result on its result_url proves Plum queued it: "
                        "now succeeded (reconciled)", campaign_id, chunk_id)
        if stored == "unknown_chunk":
            self.metrics.callbacks.labels(status="unknown_chunk").inc()
            return web.json_response({"error": "no such campaign chunk"}, status=404)
        self.metrics.callbacks.labels(status=details.status if stored != "duplicate" else "duplicate").inc()
        return web.json_response({"stored": stored != "duplicate"})

    # -- operations --------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="alive")

    async def readyz(self, request: web.Request) -> web.Response:
        """503 when this daemon cannot work (database unreachable, no recent tick); Plum being
        down is named in the body but stays 200: restarting the daemon would not help."""
        problems = await self.readiness()
        if problems:
            return web.json_response({"ready": False, "problems": problems, **self.details()}, status=503)
        return web.json_response({"ready": True, **self.details()})

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")


def tick_is_recent(last_tick: datetime | None, now: datetime, poll_interval_seconds: float) -> bool:
    """Ready means the last tick is no older than three poll intervals (and 10 s)."""
    allowed = timedelta(seconds=max(3 * poll_interval_seconds, 10.0))
    return last_tick is not None and now - last_tick <= allowed
