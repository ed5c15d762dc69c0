"""What ``campaign show`` prints (and ``--json`` returns): one campaign's report."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import windows
from .models import ChunkStatus, Outcome, PlumAccount, UnreadableTime
from .repository import CampaignReport, ZoneSummary


def fmt_time(value: Any) -> str:
    if isinstance(value, UnreadableTime):
        return f"{str(value)!r} (not a time)"
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


CAMPAIGN_FIELDS = (
    "id name status last_error survey_id instance_id contacts_path start_at end_at max_attempts "
    "reattempt_wait result_url chunk_size calling_window_start calling_window_end excluded_weekdays created_at updated_at started_at finished_at "
    "contacts_total contacts_valid contacts_invalid contacts_duplicate contacts_queued"
).split()


def plum_state(accounts: Sequence[PlumAccount], account: str) -> str | None:
    """'waiting for Plum since ... (N probes)' while the account's circuit breaker is open, or
    'held by Plum's Retry-After until ...'; None while Plum accepts requests."""
    for row in accounts:
        if row.account != account:
            continue
        if row.breaker == "open" and row.open_since is not None:
            return (f"waiting for Plum since {fmt_time(row.open_since)} UTC ({row.probes} probes); "
                    f"last error: {row.last_error}")
        if row.hold_until is not None and row.hold_until > datetime.now(timezone.utc):
            return f"held by Plum's Retry-After until {fmt_time(row.hold_until)} UTC"
    return None


def contacts_file(report: CampaignReport) -> dict[str, Any]:
    """Where the daemons read the contacts: the copy stored in the database, or contacts_path."""
    if report.contacts_file is None:
        return {"stored_in_database": False, "read_from": report.campaign.contacts_path}
    name, size, sha256 = report.contacts_file
    return {"stored_in_database": True, "file_name": name, "size_bytes": size, "sha256": sha256}


def unknown_summary(report: CampaignReport) -> dict[str, int]:
    """Unknown outcomes: reconciled (a call result proved the chunk queued) and still unconfirmed."""
    return {"reconciled_from_call_results": report.submissions_by_outcome.get(Outcome.RECONCILED.value, 0),
            "still_unconfirmed": report.chunks_by_status.get(ChunkStatus.UNKNOWN.value, 0)}


def _timing(report: CampaignReport, count: int) -> dict[str, Any]:
    first, last = report.first_request_at, report.last_request_at
    span = (last - first).total_seconds() if first and last else 0.0
    return {
        "started_at": report.campaign.started_at, "finished_at": report.campaign.finished_at,
        "first_request_at": first, "last_request_at": last,
        "achieved_requests_per_second": round((count - 1) / span, 3) if count > 1 and span > 0 else None,
    }


def report_as_dict(report: CampaignReport) -> dict[str, Any]:
    row = report.campaign
    requests = sum(report.submissions_by_outcome.values())
    return {
        "campaign": {name: getattr(row, name) for name in CAMPAIGN_FIELDS},
        "plum": report.plum_state or "accepting requests",
        "contacts_file": contacts_file(report),
        "unknown_outcomes": unknown_summary(report),
        "chunks_by_status": report.chunks_by_status,
        "contacts_by_status": report.contacts_by_status,
        "submissions_by_status_code": report.submissions_by_code,
        "submissions_by_outcome": report.submissions_by_outcome,
        "call_results_by_status": report.call_results_by_status,
        "timing": _timing(report, requests),
        "chunks_by_zone": [zone_as_dict(zone) for zone in report.zones],
        "unknown_chunks": [
            {"id": c.id, "seq": c.seq, "contacts": c.contact_count, "last_error": c.last_error}
            for c in report.unknown_chunks
        ],
    }


def zone_as_dict(zone: ZoneSummary) -> dict[str, Any]:
    window = zone.window
    return {
        "zones": list(zone.zones), "chunks": zone.chunks, "contacts": zone.contacts, "chunks_by_status": zone.by_status,
        "window_start_at": window[0] if window else None, "window_end_at": window[1] if window else None,
        "local_windows": {name: windows.describe_local(name, window) for name in zone.zones} if window else {},
    }


def print_zones(zones: list[dict[str, Any]], console: Console) -> None:
    """One row per set of time zones: its chunks and the window they are (or were) sent for."""
    table = Table("time zones", "chunks", "contacts", "chunk status", "window (UTC)", "local window",
                  title="chunks by time zone (calling windows)")
    for zone in zones:
        names, local = zone["zones"], zone["local_windows"]
        utc = (f"{fmt_time(zone['window_start_at'])[:16]} - {fmt_time(zone['window_end_at'])[:16]}"
               if zone["window_start_at"] else "-")
        shown = [f"{name}: {local[name]}" for name in names[:3]] + ([f"... {len(names) - 3} more"]
                                                                     if len(names) > 3 else [])
        status = ", ".join(f"{k} {v}" for k, v in sorted(zone["chunks_by_status"].items()))
        table.add_row("\n".join(names[:3] + ([f"+{len(names) - 3} more"] if len(names) > 3 else [])),
                      str(zone["chunks"]), str(zone["contacts"]), status, utc, "\n".join(shown))
    console.print(table)


def print_report(report: CampaignReport, console: Console) -> None:
    data = report_as_dict(report)
    fields = Table(show_header=False, box=None)
    for key, value in data["campaign"].items():
        fields.add_row(key, fmt_time(value) if isinstance(value, UnreadableTime) else
                       "-" if value is None else str(value))
    console.print(fields)
    if report.plum_state:
        console.print(Text(report.plum_state, style="bold"))
    unknown = data["unknown_outcomes"]
    if any(unknown.values()):
        console.print(f"unknown outcomes: {unknown['reconciled_from_call_results']} reconciled from call results, "
                      f"{unknown['still_unconfirmed']} still unconfirmed", highlight=False)
    for title in ("chunks_by_status", "contacts_by_status", "submissions_by_status_code", "submissions_by_outcome",
                  "call_results_by_status", "timing"):
        counts = data[title]
        table = Table(title.replace("_", " "), "value" if title == "timing" else "count")
        for key, count in sorted(counts.items(), key=lambda kv: str(kv[0])):
            table.add_row(str(key), str(count))
        console.print(table if counts else f"{title.replace('_', ' ')}: none")
    if data["chunks_by_zone"]:
        print_zones(data["chunks_by_zone"], console)
    if data["unknown_chunks"]:
        table = Table("chunk id", "seq", "contacts", "why", title="unknown chunks: resend or leave (a decision)")
        for chunk in data["unknown_chunks"]:
            table.add_row(str(chunk["id"]), str(chunk["seq"]), str(chunk["contacts"]), chunk["last_error"] or "")
        console.print(table)
