"""The actions (POST, admins only, CSRF-checked by the app's middleware): the same repository
calls and the same checks as the CLI's commands."""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from pathlib import Path


from aiohttp import BodyPartReader, web

from ..campaign_form import CampaignRequest, new_campaign, store_campaign
from ..errors import UserError
from ..models import CampaignStatus
from ..repository import utcnow
from ..suppression_input import added_message, normalised_numbers, not_listed_message, numbers_in_file, \
    removable_number
from . import auth
from .app import console_of, identity_of
from .pages import SUPPRESSIONS_SHOWN

MAX_TEXT_FIELD_BYTES = 64 * 1024
STATUS_OF_ACTION = {"pause": CampaignStatus.PAUSED, "resume": CampaignStatus.SCHEDULED,
                    "cancel": CampaignStatus.CANCELLED}
DONE_OF_ACTION = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}
CAMPAIGN_FIELDS = ("name", "survey_id", "instance_id", "start", "end", "max_attempts", "reattempt_wait",
                   "result_url", "chunk_size", "calling_window", "excluded_weekdays", "draft")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/console/campaigns/{id:\\d+}/{action:pause|resume|cancel}", change_status)
    router.add_post("/console/campaigns/{id:\\d+}/resend", resend)
    router.add_post("/console/campaigns/new", create_campaign)
    router.add_post("/console/suppressions/add", suppress_add)
    router.add_post("/console/suppressions/import", suppress_import)
    router.add_post("/console/suppressions/remove", suppress_remove)


def _back_to(campaign_id: int, done: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/console/campaigns/{campaign_id}?done={done}")


async def change_status(request: web.Request) -> web.Response:
    """pause / resume / cancel: `campaign pause|resume|cancel ID` (repository.change_status)."""
    campaign_id, action = int(request.match_info["id"]), request.match_info["action"]
    await console_of(request).repo.change_status(campaign_id, STATUS_OF_ACTION[action])
    raise _back_to(campaign_id, DONE_OF_ACTION[action])


async def resend(request: web.Request) -> web.Response:
    """`chunk resend ID` (a ``chunk`` field) or `campaign resend-unknown ID`, once confirmed."""
    campaign_id = int(request.match_info["id"])
    form = await request.post()
    if form.get("confirm") != "yes":
        raise web.HTTPSeeOther(f"/console/campaigns/{campaign_id}/confirm/resend")
    chunk = str(form.get("chunk", ""))
    repo = console_of(request).repo
    if chunk.isdigit():
        found = await repo.resend_chunks(None, int(chunk), utcnow())
    else:
        found = await repo.resend_chunks(campaign_id, None, utcnow())
    if not found:
        raise UserError(f"campaign {campaign_id} has no unknown chunk to resend")
    raise _back_to(campaign_id, "resent")


# -- uploads ------------------------------------------------------------------------------------


async def _multipart(request: web.Request, workdir: Path) -> tuple[dict[str, str], dict[str, tuple[Path, str]]]:
    """Text fields, and files streamed into ``workdir`` (path, name as uploaded). The first field
    must be the session's CSRF token, checked before anything else is read."""
    reader = await request.multipart()
    first = await reader.next()
    given = await first.text() if isinstance(first, BodyPartReader) and first.name == auth.CSRF_FIELD else None
    if not auth.csrf_ok(identity_of(request).csrf_token, given):
        raise web.HTTPForbidden(text="refused: this form has no valid CSRF token; reload the page")
    identity = identity_of(request)
    if not identity.is_admin:
        raise web.HTTPForbidden(text="refused: viewers cannot change anything")
    fields: dict[str, str] = {}
    files: dict[str, tuple[Path, str]] = {}
    limit = console_of(request).settings().console.max_upload_bytes
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            continue
        if part.filename is None:
            fields[part.name] = (await part.read_chunk(MAX_TEXT_FIELD_BYTES)).decode("utf-8", "replace")
            continue
        files[part.name] = (await _save(part, workdir, limit), _file_name(part.filename))
    return fields, files


async def _save(part: BodyPartReader, workdir: Path, limit: int) -> Path:
    path = workdir / f"upload-{len(list(workdir.iterdir()))}"
    size = 0
    with path.open("wb") as handle:
        while piece := await part.read_chunk(1 << 20):
            size += len(piece)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=limit, actual_size=size,
                    text=f"refused: the file is larger than console.max_upload_bytes ({limit:,} bytes)")
            handle.write(piece)
    return path


def _file_name(name: str) -> str:
    """The name as uploaded, without any directory or control character (kept for messages)."""
    base = re.split(r"[\\/]", name)[-1]
    return re.sub(r"[\x00-\x1f\x7f]", "", base)[:200] or "upload.csv"


def _int_field(fields: dict[str, str], name: str, flag: str, problems: list[str], default: int | None) -> int | None:
    """A number typed in the form; an unreadable one is reported as argparse reports the flag."""
    text = fields.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        problems.append(f"argument {flag}: invalid int value: {text!r}")
        return default


def _campaign_request(fields: dict[str, str], contacts: str, problems: list[str]) -> CampaignRequest:
    def text(name: str) -> str | None:
        return fields.get(name, "").strip() or None

    return CampaignRequest(
        name=fields.get("name", "").strip(), survey_id=fields.get("survey_id", "").strip(),
        instance_id=fields.get("instance_id", "").strip(), contacts=contacts,
        start=fields.get("start", ""), end=fields.get("end", ""),
        max_attempts=_int_field(fields, "max_attempts", "--max-attempts", problems, 1) or 1,
        reattempt_wait=_int_field(fields, "reattempt_wait", "--reattempt-wait", problems, None),
        result_url=text("result_url"), chunk_size=_int_field(fields, "chunk_size", "--chunk-size", problems, None),
        calling_window=text("calling_window"), excluded_weekdays=text("excluded_weekdays"),
        draft=fields.get("draft") == "yes")


async def create_campaign(request: web.Request) -> web.Response:
    """`campaign create`: the same checks and messages; the uploaded file is stored in the database."""
    console = console_of(request)
    workdir = Path(tempfile.mkdtemp(prefix="insight-console-"))
    try:
        fields, files = await _multipart(request, workdir)
        problems: list[str] = []
        if not fields.get("name", "").strip():
            problems.append("the following arguments are required: --name")
        upload = files.get("contacts")
        if upload is None or upload[0].stat().st_size == 0:
            problems.append("--contacts: no file was uploaded (or it is empty); choose the contacts CSV file")
        request_ = _campaign_request(fields, str(upload[0]) if upload else "", problems)
        try:
            new = new_campaign(request_, console.settings(), utcnow(), problems, check_file=False)
        except UserError as exc:
            return console.render(request, "new_campaign.html", status=400, form=fields,
                                  problems=[line.strip() for line in str(exc).splitlines()[1:]],
                                  message=str(exc).splitlines()[0])
        assert upload is not None
        new = dataclasses.replace(new, contacts_path=upload[1])
        row, _ = await store_campaign(console.repo, new, upload[0], file_name=upload[1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    raise _back_to(row.id, "created")


# -- the do-not-call list ---------------------------------------------------------------------


async def _suppressions(request: web.Request, status: int, message: str | None = None,
                        problems: list[str] | None = None) -> web.Response:
    console = console_of(request)
    rows, total = await console.repo.search_suppressions("", SUPPRESSIONS_SHOWN)
    return console.render(request, "suppressions.html", status=status, rows=rows, total=total, q="",
                          message=message, problems=problems or [], shown=SUPPRESSIONS_SHOWN)


async def _add(request: web.Request, numbers: list[str], reason: str | None, source: str) -> web.Response:
    added = await console_of(request).repo.add_suppressions(numbers, reason, source, utcnow())
    return await _suppressions(request, 200, added_message(added, len(numbers)))


def _refused(exc: UserError) -> tuple[str, list[str]]:
    lines = str(exc).splitlines()
    return lines[0], [line.strip() for line in lines[1:]]


async def suppress_add(request: web.Request) -> web.Response:
    """`suppress add NUMBER... [--reason R]` (one number per line, or commas between them)."""
    form = await request.post()
    raw = [n.strip() for n in re.split(r"[,;\r\n]+", str(form.get("numbers", ""))) if n.strip()]
    reason = str(form.get("reason", "")).strip() or None
    if not raw:
        return await _suppressions(request, 400, "nothing was added: type at least one number")
    try:
        numbers = normalised_numbers(raw, console_of(request).settings())
    except UserError as exc:
        return await _suppressions(request, 400, *_refused(exc))
    return await _add(request, numbers, reason, f"console:{identity_of(request).name}")


async def suppress_import(request: web.Request) -> web.Response:
    """`suppress import FILE`: a CSV with a phone column, or one number per line."""
    workdir = Path(tempfile.mkdtemp(prefix="insight-console-"))
    try:
        fields, files = await _multipart(request, workdir)
        upload = files.get("file")
        if upload is None or upload[0].stat().st_size == 0:
            return await _suppressions(request, 400, "nothing was added: choose a file")
        try:
            numbers = numbers_in_file(upload[0], console_of(request).settings(), shown=upload[1])
        except UserError as exc:
            return await _suppressions(request, 400, *_refused(exc))
        reason = fields.get("reason", "").strip() or None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return await _add(request, numbers, reason, f"import:{upload[1]}")


async def suppress_remove(request: web.Request) -> web.Response:
    """`suppress remove NUMBER`."""
    form = await request.post()
    try:
        number = removable_number(str(form.get("number", "")), console_of(request).settings())
        if not await console_of(request).repo.remove_suppression(number):
            raise UserError(not_listed_message(number))
    except UserError as exc:
        return await _suppressions(request, 400, str(exc))
    return await _suppressions(request, 200, f"{number} removed from the suppression list")


