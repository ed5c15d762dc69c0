"""The ``insight-scheduler`` command line.

Errors a user can cause end with one line naming the problem and exit status
2; only a bug in this program shows a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Coroutine

from rich.console import Console
from rich.table import Table

from . import db, windows
from .config import Settings, load_settings
from .errors import UserError
from .models import CONSOLE_ROLES, Campaign, CampaignStatus
from .breaker import account_key
from .reports import fmt_time, plum_state, print_report, report_as_dict
from .repository import NewCampaign, Repository
from .campaign_form import CampaignRequest, flag_problem, new_campaign, store_campaign, when_problems  # noqa: F401
from .suppression_input import (  # noqa: F401  (the names tests and older callers import from here)
    added_message,
    normalised_numbers,
    not_listed_message,
    numbers_in_csv as _numbers_in_csv,
    numbers_in_file,
    numbers_in_list as _numbers_in_list,
    removable_number,
)

EXIT_USER_ERROR = 2

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments already; keep its message, drop the noise."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER_ERROR, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="insight-scheduler", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default ./config.yaml, or env INSIGHT_SCHEDULER_CONFIG)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db_parser = commands.add_parser("db", help="database schema")
    db_commands = db_parser.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_commands.add_parser("upgrade", help="apply every migration (alembic upgrade head)").set_defaults(
        handler=cmd_db_upgrade
    )
    db_commands.add_parser("current", help="show the schema revision").set_defaults(handler=cmd_db_current)

    _add_campaign_commands(commands)
    _add_simulate_command(commands)
    demo = commands.add_parser("demo", help="run the real daemon against the simulator on a throw-away database")
    demo.add_argument("--contacts", type=int, default=5000, metavar="N", help="contacts to generate (default 5000)")
    demo.add_argument("--rate", type=float, default=20.0, metavar="R", help="requests per second (default 20)")
    demo.add_argument("--fail-rate", type=float, default=0.05, metavar="P", help="simulated HTTP 500s (default 0.05)")
    demo.add_argument("--chunk-size", type=int, default=100, metavar="N", help="contacts per request (default 100)")
    demo.add_argument("--keep", action="store_true", help="keep the database for `campaign show`")
    demo.add_argument("--callbacks", action="store_true",
                      help="receive call results on a signed result_url (the simulator reports every call)")
    demo.add_argument("--timezone-policy", choices=("recipient", "campaign"),
                      help="call only within local calling hours, in each recipient's or the campaign's time zone")
    demo.add_argument("--calling-window", metavar="HH:MM-HH:MM",
                      help="local calling hours (default with --timezone-policy: 08:00-21:00, the US rule)")
    demo.add_argument("--campaign-timezone", metavar="ZONE", help="with --timezone-policy campaign, e.g. America/Chicago")
    demo.add_argument("--replicas", type=int, default=1, metavar="N",
                      help="run N daemon processes on one database, sharing the account's limits")
    demo.add_argument("--database-url", metavar="URL",
                      help="with --replicas: a PostgreSQL server to use (the demo creates and drops its own "
                           "database there); default a SQLite file")
    demo.add_argument("--console", action="store_true",
                      help="open the web console on a free port with a demo admin user (prints the URL and "
                           "credentials) and keep it open until Ctrl-C")
    demo.set_defaults(handler=cmd_demo, needs_config=False)
    commands.add_parser("run", help="run the daemon (until SIGTERM / SIGINT; SIGHUP reloads config)").set_defaults(
        handler=cmd_run
    )
    _add_suppress_commands(commands)
    _add_user_commands(commands)
    check = commands.add_parser("check", help="exit 0 if the database answers and a daemon ticked recently, else 1")
    check.add_argument("--worker", help="this daemon's scheduler.worker_id (default: any daemon)")
    check.set_defaults(handler=cmd_check)
    workers = commands.add_parser("workers", help="live and recently dead daemons, from their heartbeats")
    workers.add_argument("--hours", type=float, default=24.0, metavar="H",
                         help="also list daemons that last ticked within this many hours (default 24)")
    workers.add_argument("--json", action="store_true", help="machine-readable output")
    workers.set_defaults(handler=cmd_workers)
    chunk = commands.add_parser("chunk", help="decide about single chunks")
    chunk_sub = chunk.add_subparsers(dest="chunk_command", required=True, parser_class=_Parser)
    resend = chunk_sub.add_parser("resend", help="send an unknown chunk again (it may call people twice)")
    resend.add_argument("id", type=int)
    resend.set_defaults(handler=cmd_chunk_resend)
    return parser


def _add_suppress_commands(commands: Any) -> None:
    suppress = commands.add_parser("suppress", help="the do-not-call list: these numbers are never sent")
    sub = suppress.add_subparsers(dest="suppress_command", required=True, parser_class=_Parser)
    add = sub.add_parser("add", help="add numbers")
    add.add_argument("numbers", nargs="+", metavar="NUMBER")
    add.add_argument("--reason", help="why (kept with the number)")
    add.set_defaults(handler=cmd_suppress_add)
    imp = sub.add_parser("import", help="add every number of a CSV file (phone column by name) or a list")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--reason")
    imp.set_defaults(handler=cmd_suppress_import)
    remove = sub.add_parser("remove", help="take a number off the list")
    remove.add_argument("number", metavar="NUMBER")
    remove.set_defaults(handler=cmd_suppress_remove)
    sub.add_parser("list", help="every suppressed number").set_defaults(handler=cmd_suppress_list)


def _add_user_commands(commands: Any) -> None:
    user = commands.add_parser("user", help="who may sign in to the web console")
    sub = user.add_subparsers(dest="user_command", required=True, parser_class=_Parser)
    add = sub.add_parser("add", help="add a user (prompts twice for the password)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=CONSOLE_ROLES, help="admin: steers; viewer: only looks")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(handler=cmd_user_add)
    sub.add_parser("list", help="every user and role").set_defaults(handler=cmd_user_list)
    remove = sub.add_parser("remove", help="remove a user (their sessions end)")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(handler=cmd_user_remove)
    passwd = sub.add_parser("passwd", help="set a new password (the user's sessions end)")
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    passwd.set_defaults(handler=cmd_user_passwd)


def _add_simulate_command(commands: Any) -> None:
    sim = commands.add_parser("simulate", help="run an Insight stand-in on this machine (tests, demos, benchmarks)")
    sim.add_argument("--port", type=int, default=8099)
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument(
        "--config", dest="sim_config", metavar="FILE",
        help="simulator settings (YAML); credentials default to insight.username / developer_key",
    )
    sim.add_argument("--answer-style", choices=["json", "xml", "doc"], help="doc: the documentation's {'success':true}")
    sim.add_argument("--fail-rate", type=float, metavar="P", help="probability of HTTP 500")
    sim.add_argument("--fail-first", type=int, metavar="K", help="the first K requests get HTTP 500")
    sim.add_argument("--unavailable-rate", type=float, metavar="P", help="probability of 503 with Retry-After")
    sim.add_argument("--retry-after-seconds", type=int, metavar="S")
    sim.add_argument("--latency-mean-seconds", type=float, metavar="S")
    sim.add_argument("--latency-jitter-seconds", type=float, metavar="S")
    sim.add_argument("--hang-rate", type=float, metavar="P", help="probability of queuing and then not answering")
    sim.add_argument("--hang-seconds", type=float, metavar="S")
    sim.add_argument("--drop-rate", type=float, metavar="P", help="probability of queuing and then dropping the connection")
    sim.add_argument("--reject-number", dest="reject_numbers", action="append", metavar="NUMBER",
                     help="a chunk containing this number gets HTTP 400 (repeatable)")
    sim.add_argument("--callback-delay-seconds", type=float, metavar="S", help="POST call_details to result_url")
    sim.add_argument("--outage-status", type=int, metavar="CODE",
                     help="one outage: every request in it gets this HTTP status (e.g. 503, 500, 429), nothing queued")
    sim.add_argument("--outage-seconds", type=float, metavar="S", help="how long the outage lasts")
    sim.add_argument("--outage-after-requests", type=int, metavar="N",
                     help="the outage begins at request N+1 (default 0: the first request)")
    sim.add_argument("--outage-retry-after-seconds", type=int, metavar="S",
                     help="Retry-After on outage answers with status 429 or 503")
    sim.add_argument("--seed", type=int)
    sim.set_defaults(handler=cmd_simulate)


SIMULATOR_FLAGS = (
    "answer_style fail_rate fail_first unavailable_rate retry_after_seconds latency_mean_seconds "
    "latency_jitter_seconds hang_rate hang_seconds drop_rate reject_numbers callback_delay_seconds seed "
    "outage_status outage_seconds outage_after_requests outage_retry_after_seconds"
).split()


async def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from .simulator import SimulatorSettings, serve_forever

    values: dict[str, Any] = {
        "username": settings.insight.username,
        "developer_key": settings.insight.developer_key.get_secret_value(),
        "phone_column": settings.insight.phone_column,
    }
    if args.sim_config:
        try:
            values.update(yaml_mapping(Path(args.sim_config)))
        except OSError as exc:
            raise UserError(f"simulate --config: cannot read {args.sim_config}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UserError(f"simulate --config: {args.sim_config}: {exc}") from None
    values.update({name: getattr(args, name) for name in SIMULATOR_FLAGS if getattr(args, name) is not None})
    try:
        sim_settings = SimulatorSettings.from_mapping(values)
    except (TypeError, ValueError) as exc:
        known = ", ".join(f.name for f in dataclasses.fields(SimulatorSettings))
        where = f"simulate --config: {args.sim_config}" if args.sim_config else "simulate"
        raise UserError(f"{where}: {exc}; use only these keys: {known}") from None
    try:
        await serve_forever(sim_settings, args.host, args.port)
    except OSError as exc:
        raise UserError(f"simulate: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
                        "choose another --port or --host") from None
    return 0


def yaml_mapping(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("must be a mapping of keys, like `fail_rate: 0.1` on its own line")
    return data


def _add_campaign_commands(commands: Any) -> None:
    campaign = commands.add_parser("campaign", help="create, show and control campaigns")
    sub = campaign.add_subparsers(dest="campaign_command", required=True, parser_class=_Parser)

    create = sub.add_parser("create", help="add a campaign")
    create.add_argument("--name", required=True)
    create.add_argument("--survey-id", required=True)
    create.add_argument("--instance-id", required=True)
    create.add_argument("--contacts", required=True, metavar="FILE", help="CSV file of contacts")
    create.add_argument("--start", required=True, metavar="WHEN", help="ISO 8601 with offset, or Unix seconds")
    create.add_argument("--end", required=True, metavar="WHEN", help="ISO 8601 with offset, or Unix seconds")
    create.add_argument("--max-attempts", type=int, default=1, metavar="N", help="1..10 (default 1)")
    create.add_argument("--reattempt-wait", type=int, metavar="S", help="seconds; required when max-attempts > 1")
    create.add_argument("--result-url", metavar="URL")
    create.add_argument("--chunk-size", type=int, metavar="N", help="override submission.chunk_size")
    create.add_argument("--calling-window", metavar="HH:MM-HH:MM",
                        help="local calling hours for this campaign (overrides contacts.calling_window)")
    create.add_argument("--excluded-weekdays", metavar="DAYS", help="e.g. sat,sun: nobody is called on those days")
    create.add_argument("--draft", action="store_true", help="create as draft (not picked up until resumed)")
    create.set_defaults(handler=cmd_campaign_create)

    sub.add_parser("list", help="all campaigns with progress").set_defaults(handler=cmd_campaign_list)
    for name, handler, text in (
        ("show", cmd_campaign_show, "one campaign in detail"),
        ("pause", cmd_campaign_pause, "stop starting new submissions"),
        ("resume", cmd_campaign_resume, "set a paused or draft campaign back to scheduled"),
        ("cancel", cmd_campaign_cancel, "cancel; unsent chunks become cancelled"),
        ("resend-unknown", cmd_campaign_resend_unknown, "send every unknown chunk again (may call people twice)"),
        ("export", cmd_campaign_export, "one CSV row per input contact with its outcome"),
        ("verify", cmd_campaign_verify, "check the ledger's accounting: exit 0, or 1 listing each discrepancy"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("id", type=int)
        cmd.add_argument("--json", action="store_true", help="machine-readable output") if name == "show" else None
        if name == "export":
            cmd.add_argument("--out", required=True, metavar="FILE.csv")
            cmd.add_argument("--force", action="store_true", help="overwrite FILE.csv if it exists")
        cmd.set_defaults(handler=handler)


# -- handlers ------------------------------------------------------------------


@asynccontextmanager
async def _repository(settings: Settings) -> AsyncIterator[Repository]:
    """The repository on a migrated database, closed afterwards."""
    repo = Repository(db.create_engine(settings.database.url))
    try:
        await db.ensure_migrated(repo.engine)
        yield repo
    finally:
        await repo.close()


async def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    engine = db.create_engine(settings.database.url)
    try:
        await db.upgrade(engine)
        async with db.connect_or_explain(engine) as conn:
            revision = await db.current_revision(conn)
    finally:
        await engine.dispose()
    print(f"database {db.safe_url(settings.database.url)} is at revision {revision} (head)")
    return 0


async def cmd_db_current(args: argparse.Namespace, settings: Settings) -> int:
    engine = db.create_engine(settings.database.url)
    try:
        async with db.connect_or_explain(engine) as conn:
            revision = await db.current_revision(conn)
    finally:
        await engine.dispose()
    print(f"current: {revision or 'none'}  head: {db.head_revision()}")
    return 0


def _new_campaign_from_args(args: argparse.Namespace, settings: Settings, now: datetime) -> NewCampaign:
    request = CampaignRequest(
        name=args.name, survey_id=args.survey_id, instance_id=args.instance_id, contacts=args.contacts,
        start=args.start, end=args.end, max_attempts=args.max_attempts, reattempt_wait=args.reattempt_wait,
        result_url=args.result_url, chunk_size=args.chunk_size, calling_window=args.calling_window,
        excluded_weekdays=args.excluded_weekdays, draft=args.draft)
    return new_campaign(request, settings, now)


async def cmd_campaign_create(args: argparse.Namespace, settings: Settings) -> int:
    from .repository import utcnow

    new = _new_campaign_from_args(args, settings, utcnow())
    async with _repository(settings) as repo:
        _, message = await store_campaign(repo, new, Path(new.contacts_path))
    print(message)
    return 0


async def cmd_campaign_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _repository(settings) as repo:
        rows = await repo.list_campaigns()
        plum = plum_state(await repo.plum_accounts(), _account(settings))
    table = Table("id", "name", "status", "start (UTC)", "end (UTC)", "contacts", "queued", "progress")
    for row in rows:
        table.add_row(
            str(row.id),
            row.name,
            row.status + (f" ({plum})" if plum and row.status == CampaignStatus.RUNNING.value else ""),
            fmt_time(row.start_at),
            fmt_time(row.end_at),
            str(row.contacts_total),
            str(row.contacts_queued),
            _progress(row),
        )
    _console().print(table if rows else "no campaigns yet")
    return 0


def _account(settings: Settings) -> str:
    return account_key(settings.insight.base_url, settings.insight.username)


def _progress(row: Campaign) -> str:
    if not row.contacts_valid:
        return "-"
    return f"{100.0 * row.contacts_queued / row.contacts_valid:.1f}%"


async def cmd_campaign_show(args: argparse.Namespace, settings: Settings) -> int:
    async with _repository(settings) as repo:
        report = await repo.campaign_report(args.id)
        report.contacts_file = await repo.stored_contacts_summary(args.id)
        if report.campaign.status == CampaignStatus.RUNNING.value:
            report.plum_state = plum_state(await repo.plum_accounts(), _account(settings))
    if args.json:
        print(json.dumps(report_as_dict(report), indent=2, default=str))
    else:
        print_report(report, _console())
    return 0


async def _change(args: argparse.Namespace, settings: Settings, target: CampaignStatus) -> int:
    async with _repository(settings) as repo:
        row = await repo.change_status(args.id, target)
    print(f"campaign {row.id} is now {row.status}")
    return 0


async def cmd_campaign_pause(args: argparse.Namespace, settings: Settings) -> int:
    return await _change(args, settings, CampaignStatus.PAUSED)


async def cmd_campaign_resume(args: argparse.Namespace, settings: Settings) -> int:
    return await _change(args, settings, CampaignStatus.SCHEDULED)


async def cmd_campaign_cancel(args: argparse.Namespace, settings: Settings) -> int:
    return await _change(args, settings, CampaignStatus.CANCELLED)


async def cmd_campaign_verify(args: argparse.Namespace, settings: Settings) -> int:
    from .verify import verify_campaign

    async with _repository(settings) as repo:
        verdict = await verify_campaign(repo, args.id)
    if not verdict.discrepancies:
        print(f"campaign {args.id}: consistent ({verdict.summary})")
        return 0
    print(f"campaign {args.id}: {len(verdict.discrepancies)} discrepancies ({verdict.summary})")
    for line in verdict.discrepancies:
        print(f"  {line}")
    return 1


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import DemoOptions, run_demo

    problems = []
    if args.contacts < 1:
        problems.append(f"--contacts: must be >= 1 (got {args.contacts})")
    if args.rate <= 0:
        problems.append(f"--rate: must be > 0 (got {args.rate})")
    if not 0 <= args.fail_rate < 1:
        problems.append(f"--fail-rate: must be >= 0 and < 1 (got {args.fail_rate})")
    if args.chunk_size < 1:
        problems.append(f"--chunk-size: must be >= 1 (got {args.chunk_size})")
    window = args.calling_window or ("08:00-21:00" if args.timezone_policy else None)
    policy = args.timezone_policy or "recipient"
    problems += _demo_window_problems(window, policy, args.campaign_timezone)
    if not 1 <= args.replicas <= 16:
        problems.append(f"--replicas: must be between 1 and 16 (got {args.replicas})")
    if args.database_url and args.replicas == 1:
        problems.append("--database-url: only with --replicas 2 or more (the single-daemon demo uses SQLite)")
    if args.replicas > 1 and (args.callbacks or window or args.console):
        problems.append("--replicas: not with --callbacks, --calling-window, --timezone-policy or --console")
    if problems:
        raise UserError("cannot run the demo:\n" + "\n".join(f"  {p}" for p in problems))
    options = DemoOptions(contacts=args.contacts, rate=args.rate, fail_rate=args.fail_rate,
                          chunk_size=args.chunk_size, keep=args.keep, callbacks=args.callbacks,
                          calling_window=window, timezone_policy=policy, campaign_timezone=args.campaign_timezone,
                          console_port=_free_port() if args.console else None)
    if args.replicas > 1:
        from .replicas_demo import run_replicas_demo

        return await run_replicas_demo(options, args.replicas, args.database_url, _console())
    return await run_demo(options, _console())


def _free_port() -> int:
    from .demo import _free_port as free

    return free()


def _demo_window_problems(window: str | None, policy: str, zone: str | None) -> list[str]:
    problems = []
    if window:
        try:
            windows.parse_window(window)
        except ValueError as exc:
            problems.append(f"--calling-window: {exc}")
    if zone:
        try:
            windows.check_zone(zone)
        except ValueError as exc:
            problems.append(f"--campaign-timezone: {exc}")
    elif policy == "campaign":
        problems.append("--campaign-timezone: required with --timezone-policy campaign")
    return problems


async def _suppress(settings: Settings, numbers: list[str], reason: str | None, source: str) -> int:
    from .repository import utcnow

    async with _repository(settings) as repo:
        added = await repo.add_suppressions(numbers, reason, source, utcnow())
    print(added_message(added, len(numbers)))
    return 0


async def cmd_suppress_add(args: argparse.Namespace, settings: Settings) -> int:
    return await _suppress(settings, normalised_numbers(args.numbers, settings), args.reason, "cli")


async def cmd_suppress_import(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    if not path.exists():
        raise UserError(f"suppress import: {path} does not exist")
    if path.is_dir():
        raise UserError(f"suppress import: {path} is a directory; give a CSV file or a list of numbers")
    numbers = numbers_in_file(path, settings)
    return await _suppress(settings, numbers, args.reason, f"import:{path.name}")


async def cmd_suppress_remove(args: argparse.Namespace, settings: Settings) -> int:
    number = removable_number(args.number, settings)
    async with _repository(settings) as repo:
        removed = await repo.remove_suppression(number)
    if not removed:
        raise UserError(not_listed_message(number))
    print(f"{number} removed from the suppression list")
    return 0


async def cmd_suppress_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _repository(settings) as repo:
        rows = await repo.list_suppressions()
    table = Table("number", "reason", "added (UTC)", "source")
    for row in rows:
        table.add_row(row.number, row.reason or "", fmt_time(row.added_at), row.source or "")
    _console().print(table if rows else "the suppression list is empty")
    return 0


async def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from .identity import state_of
    from .repository import utcnow

    if not 0 < args.hours <= 24 * 3660:  # NaN fails too
        raise UserError(f"--hours: must be > 0 and at most 87840 (ten years) (got {args.hours:g})")
    now = utcnow()
    async with _repository(settings) as repo:
        found = await repo.worker_activity(now - timedelta(hours=args.hours), now - timedelta(minutes=1))
    poll = settings.scheduler.poll_interval_seconds
    listed: list[dict[str, Any]] = [{"id": a.worker.worker_id, "state": state_of(a.worker, now, poll), "host": a.worker.host,
               "pid": a.worker.pid, "version": a.worker.version, "started_at": a.worker.started_at,
               "last_tick_at": a.worker.last_tick_at, "stopped_at": a.worker.stopped_at,
               "in_flight": a.in_flight, "requests_last_minute": a.requests_last_minute} for a in found]
    if args.json:
        print(json.dumps(listed, indent=2, default=str))
        return 0
    table = Table("id", "state", "host", "pid", "version", "started (UTC)", "last tick (UTC)", "in flight",
                  "requests last minute", title=f"daemons seen in the last {args.hours:g} h")
    for w in listed:
        table.add_row(str(w["id"]), str(w["state"]), str(w["host"] or "-"), str(w["pid"] or "-"),
                      str(w["version"] or "-"),
                      fmt_time(w["started_at"]), fmt_time(w["last_tick_at"]), str(w["in_flight"]),
                      str(w["requests_last_minute"]))
    _console().print(table if listed else f"no daemon ticked in the last {args.hours:g} h")
    return 0


async def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from .repository import utcnow
    from .web import tick_is_recent

    try:
        async with _repository(settings) as repo:
            last = await repo.last_tick(args.worker)
    except UserError as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    if not tick_is_recent(last, utcnow(), settings.scheduler.poll_interval_seconds):
        print(f"not ready: last tick {last or 'never'}", file=sys.stderr)
        return 1
    print(f"ready: last tick {last}")
    return 0


async def cmd_campaign_export(args: argparse.Namespace, settings: Settings) -> int:
    from .export import write_export

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out: {args.out} is a directory; give the path of the CSV file to write")
    if os.path.lexists(out) and not args.force:
        raise UserError(f"--out: {args.out} exists; add --force to overwrite")
    async with _repository(settings) as repo:
        await repo.get_campaign(args.id)
        try:
            count = await write_export(repo, args.id, out)
        except OSError as exc:
            raise UserError(f"--out: cannot write {args.out}: {exc.strerror or exc}; "
                            "choose a file in a directory that exists and that you can write to") from None
    print(f"{count} contact(s) written to {args.out}")
    return 0


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from .logs import configure_logging
    from .service import Daemon

    secret_filter = configure_logging(settings)
    daemon = Daemon(settings, config_path=args.config, secret_filter=secret_filter)
    return await daemon.run()


async def _resend(settings: Settings, campaign_id: int | None, chunk_id: int | None) -> int:
    from .repository import utcnow

    async with _repository(settings) as repo:
        count = await repo.resend_chunks(campaign_id, chunk_id, utcnow())
    print(f"{count} unknown chunk(s) set to pending; a running daemon sends them within one poll interval")
    return 0


async def cmd_chunk_resend(args: argparse.Namespace, settings: Settings) -> int:
    return await _resend(settings, None, args.id)


async def cmd_campaign_resend_unknown(args: argparse.Namespace, settings: Settings) -> int:
    return await _resend(settings, args.id, None)


# -- console users ----------------------------------------------------------------------

USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,100}")


def _user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise UserError(f"user name {name!r}: use 1 to 100 letters, digits and . _ @ - (no spaces)")
    return name


def _read_password(from_stdin: bool) -> str:
    """One line of standard input, or typed twice at a prompt that does not echo it."""
    import getpass

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UserError("--password-stdin: standard input held no password")
        return password
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for the password on: give it on standard input with --password-stdin")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("password again: "):
        raise UserError("the two passwords differ; nothing was changed")
    return first


async def cmd_user_add(args: argparse.Namespace, settings: Settings) -> int:
    from .console.passwords import hash_password
    from .repository import utcnow

    name = _user_name(args.name)
    async with _repository(settings) as repo:
        if await repo.user_by_name(name) is not None:  # before asking for a password in vain
            raise UserError(f"user {name!r} exists; `user passwd {name}` changes the password")
        password_hash = await asyncio.to_thread(hash_password, _read_password(args.password_stdin))
        await repo.add_user(name, args.role, password_hash, utcnow())
    print(f"user {name} added ({args.role})")
    return 0


async def cmd_user_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _repository(settings) as repo:
        users = await repo.list_users()
    table = Table("name", "role", "created (UTC)", "password changed (UTC)")
    for user in users:
        table.add_row(user.name, user.role, fmt_time(user.created_at), fmt_time(user.password_changed_at))
    _console().print(table if users else "no console users yet: `insight-scheduler user add NAME --role admin`")
    return 0


async def cmd_user_remove(args: argparse.Namespace, settings: Settings) -> int:
    async with _repository(settings) as repo:
        await repo.remove_user(args.name)
    print(f"user {args.name} removed; their sessions are ended")
    return 0


async def cmd_user_passwd(args: argparse.Namespace, settings: Settings) -> int:
    from .console.passwords import hash_password
    from .repository import utcnow

    async with _repository(settings) as repo:
        if await repo.user_by_name(args.name) is None:
            raise UserError(f"no user named {args.name!r}; `user list` shows every user")
        password_hash = await asyncio.to_thread(hash_password, _read_password(args.password_stdin))
        await repo.set_password(args.name, password_hash, utcnow())
    print(f"password of {args.name} changed; their sessions are ended")
    return 0


def _console() -> Console:
    return Console(width=160 if not sys.stdout.isatty() else None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config) if getattr(args, "needs_config", True) else Settings()
        handler: Handler = args.handler
        return asyncio.run(handler(args, settings))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
