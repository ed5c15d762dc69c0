"""The pages (GET): campaigns, one campaign, new campaign, the do-not-call list, daemons.

Each live page is a full page plus a fragment URL its script fetches every few seconds;
both render the same template part from the same data.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

from aiohttp import web

from ..breaker import account_key
from ..config import Settings
from ..export import export_lines, extra_columns
from ..identity import state_of
from ..models import Campaign, CampaignStatus
from ..reports import contacts_file, plum_state, unknown_summary, zone_as_dict
from ..repository import PAUSABLE, RESUMABLE, FINAL, utcnow
from . import charts
from .app import console_of, identity_of, require_admin

UNKNOWN_SHOWN = 50
RESULTS_SHOWN = 10
SUPPRESSIONS_SHOWN = 200
CHUNK_COUNTERS = ("pending", "succeeded", "failed", "rejected", "unknown", "expired", "cancelled")
# What an action says when it is done (the redirect names it; nothing from the query is shown as is).
DONE_MESSAGES = {
    "paused": "Paused: no new request starts for this campaign.",
    "resumed": "Resumed: the campaign is scheduled again.",
    "cancelled": "Cancelled: its unsent chunks are cancelled.",
    "resent": "The unknown chunk(s) are pending again; a running daemon sends them within one poll interval.",
    "created": "Campaign created; a daemon ingests its contacts at its start.",
}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/", campaigns_page)
    router.add_get("/console/campaigns/table", campaigns_fragment)
    router.add_get("/console/campaigns/new", new_campaign_page)
    router.add_get("/console/campaigns/{id:\\d+}", campaign_page)
    router.add_get("/console/campaigns/{id:\\d+}/live", campaign_fragment)
    router.add_get("/console/campaigns/{id:\\d+}/contacts", contacts_page)
    router.add_get("/console/campaigns/{id:\\d+}/export.csv", export_csv)
    router.add_get("/console/campaigns/{id:\\d+}/confirm/{action:cancel|resend}", confirm_page)
    router.add_get("/console/suppressions", suppressions_page)
    router.add_get("/console/daemons", daemons_page)


def _account(settings: Settings) -> str:
    return account_key(settings.insight.base_url, settings.insight.username)


# -- campaigns ---------------------------------------------------------------------------


async def _campaigns_view(request: web.Request) -> dict[str, Any]:
    console = console_of(request)
    settings, now = console.settings(), utcnow()
    overview = await console.repo.console_overview(now)
    plum = plum_state(await console.repo.plum_accounts(), _account(settings))
    rate = settings.submission.rate_limit_per_second
    return {
        "rows": [campaign_row(row, overview.requests_last_minute.get(row.id, 0), overview.next_window.get(row.id))
                 for row in overview.campaigns],
        "plum": plum, "account_last_minute": overview.account_last_minute,
        "minute_limit": int(rate * 60), "rate": rate, "in_flight_limit": settings.submission.max_concurrency,
        "now": now, "refresh_ms": _refresh_ms(settings),
    }


def _refresh_ms(settings: Settings) -> int:
    return int(settings.console.refresh_seconds * 1000)


def campaign_row(row: Campaign, last_minute: int, next_window: Any) -> dict[str, Any]:
    """One line of the campaigns page, from the campaign's counters (no contact is read)."""
    return {
        "id": row.id, "name": row.name, "status": row.status, "last_error": row.last_error,
        "queued": row.contacts_queued, "valid": row.contacts_valid, "percent": _percent(row),
        "chunks": {name: getattr(row, f"chunks_{name}") for name in CHUNK_COUNTERS},
        "chunks_total": row.chunks_total, "last_minute": last_minute, "next_window": next_window,
        "start_at": row.start_at, "end_at": row.end_at, "ingested": row.ingested_at is not None,
    }


def _percent(row: Campaign) -> float | None:
    return 100.0 * row.contacts_queued / row.contacts_valid if row.contacts_valid else None


async def campaigns_page(request: web.Request) -> web.Response:
    return console_of(request).render(request, "campaigns.html", **await _campaigns_view(request))


async def campaigns_fragment(request: web.Request) -> web.Response:
    return console_of(request).render(request, "_campaigns_table.html", **await _campaigns_view(request))


# -- one campaign ----------------------------------------------------------------------------


def _campaign_id(request: web.Request) -> int:
    return int(request.match_info["id"])


async def _campaign_view(request: web.Request) -> dict[str, Any]:
    """What `campaign show` prints, from the same report (contacts from the counters), and charts."""
    console, campaign_id = console_of(request), _campaign_id(request)
    repo, settings = console.repo, console.settings()
    report = await repo.campaign_report(campaign_id, live=True)
    report.contacts_file = await repo.stored_contacts_summary(campaign_id)
    row = report.campaign
    if row.status == CampaignStatus.RUNNING.value:
        report.plum_state = plum_state(await repo.plum_accounts(), _account(settings))
    points, bucket = charts.rate_series(await repo.requests_by_second(campaign_id))
    unknown, unknown_total = await repo.unknown_chunk_page(campaign_id, UNKNOWN_SHOWN)
    return {
        "c": row, "report": report, "file": contacts_file(report), "unknown_summary": unknown_summary(report),
        "columns": _columns(row), "zones": [zone_as_dict(zone) for zone in report.zones],
        "chunk_contacts": await repo.chunk_contacts_by_status(campaign_id),
        "rate_chart": charts.rate_chart(points, settings.submission.rate_limit_per_second, bucket),
        "outcome_chart": charts.bar_chart(report.submissions_by_outcome, "submissions by outcome"),
        "results": await repo.latest_call_results(campaign_id, RESULTS_SHOWN),
        # a call result without a status (Plum's body had none) is counted under "none", as the CLI shows it
        "call_results": {("none" if key is None else str(key)): n for key, n in report.call_results_by_status.items()},
        "unknown": unknown, "unknown_total": unknown_total,
        "can_pause": row.status in PAUSABLE, "can_resume": row.status in RESUMABLE,
        "can_cancel": row.status not in FINAL, "refresh_ms": _refresh_ms(settings), "now": utcnow(),
    }


def _columns(row: Campaign) -> list[str]:
    """The contacts file's columns as ingestion read them (the phone column first)."""
    if not row.contacts_header:
        return []
    phone = json.loads(row.contacts_header).get("phone")
    return ([phone] if phone else []) + extra_columns(row.contacts_header)


async def campaign_page(request: web.Request) -> web.Response:
    view = await _campaign_view(request)
    done = DONE_MESSAGES.get(request.query.get("done", ""))
    return console_of(request).render(request, "campaign.html", done=done, **view)


async def campaign_fragment(request: web.Request) -> web.Response:
    return console_of(request).render(request, "_campaign_live.html", **await _campaign_view(request))


async def contacts_page(request: web.Request) -> web.Response:
    """Exact counts per contact status: reads every contact of the campaign, so only on request."""
    console, campaign_id = console_of(request), _campaign_id(request)
    row = await console.repo.get_campaign(campaign_id)
    counts = await console.repo.contacts_by_status(campaign_id)
    return console.render(request, "contacts.html", c=row, counts=counts)


async def export_csv(request: web.Request) -> web.StreamResponse:
    """The file `campaign export` writes, streamed (a million rows never sit in memory)."""
    repo, campaign_id = console_of(request).repo, _campaign_id(request)
    row = await repo.get_campaign(campaign_id)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="campaign-{row.id}-export.csv"'})
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    async for line in export_lines(repo, campaign_id, extra_columns(row.contacts_header)):
        writer.writerow(line)
        if buffer.tell() > 64 * 1024:
            await response.write(buffer.getvalue().encode("utf-8"))
            buffer.seek(0)
            buffer.truncate()
    await response.write(buffer.getvalue().encode("utf-8"))
    await response.write_eof()
    return response


async def confirm_page(request: web.Request) -> web.Response:
    """Cancel and resend are asked twice: resending may call people twice, cancelling is final."""
    identity = require_admin(request)
    console, campaign_id = console_of(request), _campaign_id(request)
    row = await console.repo.get_campaign(campaign_id)
    chunk = request.query.get("chunk", "")
    return console.render(request, "confirm.html", c=row, action=request.match_info["action"],
                          chunk=int(chunk) if chunk.isdigit() else None, csrf=identity.csrf_token)


# -- new campaign, do-not-call, daemons -------------------------------------------------------


async def new_campaign_page(request: web.Request) -> web.Response:
    require_admin(request)
    return console_of(request).render(request, "new_campaign.html", problems=[], form={}, status=200)


async def suppressions_page(request: web.Request) -> web.Response:
    console = console_of(request)
    needle = request.query.get("q", "").strip()[:64]
    rows, total = await console.repo.search_suppressions(needle, SUPPRESSIONS_SHOWN)
    return console.render(request, "suppressions.html", rows=rows, total=total, q=needle, message=None,
                          problems=[], shown=SUPPRESSIONS_SHOWN)


async def daemons_page(request: web.Request) -> web.Response:
    console = console_of(request)
    now, poll = utcnow(), console.settings().scheduler.poll_interval_seconds
    found = await console.repo.worker_activity(now - timedelta(hours=24), now - timedelta(minutes=1))
    workers = [{"w": a.worker, "state": state_of(a.worker, now, poll), "in_flight": a.in_flight,
                "last_minute": a.requests_last_minute} for a in found]
    return console.render(request, "daemons.html", workers=workers, now=now)


def csrf_of(request: web.Request) -> str:
    return identity_of(request).csrf_token
