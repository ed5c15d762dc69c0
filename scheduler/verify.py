"""What a campaign's ledger rows must say once it is ingested, checked from the rows alone.

Each rule reads one campaign in one read-only transaction and returns one line
per broken rule, naming the counts; the daemon (when a campaign becomes final)
and ``insight-scheduler campaign verify`` report the same lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, Sequence, TypeVar

from sqlalchemy import case, func, select, text
from sqlalchemy.engine import Connection, Row

from .errors import NotFound
from .models import (
    FINAL_CAMPAIGN_STATUSES,
    Campaign,
    CampaignStatus,
    Chunk,
    ChunkStatus,
    Contact,
    ContactStatus,
    Outcome,
    Submission,
)

C, K = ContactStatus, ChunkStatus

# Taken out of a chunk before it is sent (at the end of ingestion or at claim time);
# they keep its chunk_id, whatever becomes of the chunk.
LEFT_THEIR_CHUNK = frozenset({C.SUPPRESSED.value, C.RECENTLY_CONTACTED.value})
NOT_VALID = frozenset({C.INVALID.value, C.DUPLICATE.value})
# What a contact still in a chunk of each status is.
CONTACTS_OF_CHUNK: dict[str, frozenset[str]] = {
    K.PENDING.value: frozenset({C.PENDING.value}),
    K.SUBMITTING.value: frozenset({C.PENDING.value}),
    K.SUCCEEDED.value: frozenset({C.QUEUED.value}),
    K.FAILED.value: frozenset({C.FAILED.value}),
    K.REJECTED.value: frozenset({C.REJECTED.value}),
    K.UNKNOWN.value: frozenset({C.UNKNOWN.value}),
    K.EXPIRED.value: frozenset({C.EXPIRED.value, C.OUT_OF_WINDOW.value}),
    K.CANCELLED.value: frozenset({C.CANCELLED.value}),
    K.SPLIT.value: frozenset(),  # its unsent contacts moved to its halves
}
# A valid contact in no chunk: its time zones had no calling window before end_at.
UNCHUNKED = frozenset({C.OUT_OF_WINDOW.value}) | LEFT_THEIR_CHUNK | NOT_VALID
# Statuses only a claim leads to: each attempt left a submission row.
CLAIMED = frozenset(s.value for s in (K.SUBMITTING, K.SUCCEEDED, K.FAILED, K.REJECTED, K.UNKNOWN, K.SPLIT))
OPEN = (K.PENDING.value, K.SUBMITTING.value)
FINAL = frozenset(s.value for s in FINAL_CAMPAIGN_STATUSES)
# A request may still be in flight when an admin or an answer stops the campaign.
STOPPED = frozenset({CampaignStatus.CANCELLED.value, CampaignStatus.FAILED.value})
COUNTED_CHUNKS = ("succeeded", "failed", "rejected", "unknown", "expired", "cancelled")
EXAMPLES = 5

Check = Callable[[Connection, Any], list[str]]
T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    discrepancies: list[str]
    summary: str


def campaign_discrepancies(conn: Connection, campaign_id: int, settled: bool | None = None) -> list[str]:
    """One line per broken invariant; [] when consistent or not yet ingested.

    The counters of a campaign still sending are refreshed once a tick, and those of
    a stopped one when its last answer lands, so they are compared only when
    ``settled`` (default: the campaign is final and awaits no answer).
    """
    _snapshot(conn)
    campaign = _campaign(conn, campaign_id)
    if campaign.ingested_at is None:
        return []
    checks = list(ALWAYS)
    if _settled(conn, campaign) if settled is None else settled:
        checks += SETTLED
    return [line for check in checks for line in check(conn, campaign)]


def campaign_verdict(conn: Connection, campaign_id: int) -> Verdict:
    discrepancies = campaign_discrepancies(conn, campaign_id)
    return Verdict(discrepancies, campaign_summary(conn, campaign_id))


def campaign_summary(conn: Connection, campaign_id: int) -> str:
    """'completed; 232 contacts (230 queued, 1 invalid, 1 duplicate); 10 chunks; 14 submissions'."""
    campaign = _campaign(conn, campaign_id)
    if campaign.ingested_at is None:
        return f"{campaign.status}, not ingested yet: nothing to check"
    contacts = _count_by(conn, Contact.status, Contact.campaign_id == campaign_id)
    chunks = _count_by(conn, Chunk.status, Chunk.campaign_id == campaign_id)
    submissions = sum(_count_by(conn, Submission.outcome, Submission.campaign_id == campaign_id).values())
    return (f"{campaign.status}; {sum(contacts.values())} contacts ({_listing(contacts)}); "
            f"{sum(chunks.values())} chunks ({_listing(chunks)}); {submissions} submissions")


class LedgerDoor(Protocol):
    """Repository's one-transaction door (``AdminQueries._ledger``)."""

    async def _ledger(self, function: Callable[..., T], *args: Any, read_only: bool = False) -> T: ...


async def verify_campaign(repo: LedgerDoor, campaign_id: int) -> Verdict:
    """The discrepancies and a summary, read in one transaction (``campaign verify``)."""
    return await repo._ledger(campaign_verdict, campaign_id, read_only=True)


class VerifyQueries:
    """Mixed into Repository: the ledger's invariants for one campaign."""

    _ledger: Callable[..., Awaitable[Any]]

    async def verify_campaign(self, campaign_id: int) -> list[str]:
        found: list[str] = await self._ledger(campaign_discrepancies, campaign_id, read_only=True)
        return found


# -- the invariants ------------------------------------------------------------------


def contact_totals(conn: Connection, campaign: Any) -> list[str]:
    """contacts_total / _valid / _invalid / _duplicate are counts of the campaign's contact rows."""
    by_status = _count_by(conn, Contact.status, Contact.campaign_id == campaign.id)
    found = sum(by_status.values())
    lines = []
    if found != campaign.contacts_total:
        lines.append(f"contacts_total is {campaign.contacts_total} but contacts rows by status sum to {found} "
                     f"({_listing(by_status)})")
    invalid, duplicate = by_status.get(C.INVALID.value, 0), by_status.get(C.DUPLICATE.value, 0)
    for column, rows, what in (("contacts_invalid", invalid, "invalid"),
                               ("contacts_duplicate", duplicate, "duplicate"),
                               ("contacts_valid", found - invalid - duplicate, "neither invalid nor duplicate")):
        if getattr(campaign, column) != rows:
            lines.append(f"{column} is {getattr(campaign, column)} but {rows} contacts rows are {what}")
    return lines


def contacts_agree_with_chunks(conn: Connection, campaign: Any) -> list[str]:
    """A contact in a chunk has the status its chunk's status implies."""
    pairs = conn.execute(
        select(Chunk.status, Contact.status, func.count(), func.min(Chunk.id))
        .join(Chunk, Chunk.id == Contact.chunk_id)
        .where(Contact.campaign_id == campaign.id, Chunk.campaign_id == campaign.id)
        .group_by(Chunk.status, Contact.status)
    ).all()
    return [
        f"{count} contacts are {contact} in {chunk} chunks (e.g. chunk {example}); "
        f"a {chunk} chunk holds only {_allowed(chunk)} contacts"
        for chunk, contact, count, example in pairs
        if contact not in LEFT_THEIR_CHUNK and contact not in CONTACTS_OF_CHUNK.get(chunk, frozenset())
    ]


def contacts_without_chunk(conn: Connection, campaign: Any) -> list[str]:
    """A valid contact in no chunk is out_of_window (or was never to be called); none points at a missing chunk."""
    found = conn.execute(
        select(Contact.status, func.count(), func.count(Contact.chunk_id))
        .outerjoin(Chunk, (Chunk.id == Contact.chunk_id) & (Chunk.campaign_id == campaign.id))
        .where(Contact.campaign_id == campaign.id, Chunk.id.is_(None))
        .group_by(Contact.status)
    ).all()
    lines = []
    dangling = sum(pointing for _, _, pointing in found)
    if dangling:
        lines.append(f"{dangling} contacts point at a chunk_id that is no chunk of this campaign")
    for status, count, pointing in found:
        if status not in UNCHUNKED and count - pointing:
            lines.append(f"{count - pointing} contacts are {status} but in no chunk "
                         f"(only {', '.join(sorted(UNCHUNKED))} contacts may be)")
    return lines


def chunk_sizes(conn: Connection, campaign: Any) -> list[str]:
    """A chunk's contact_count is the number of its contacts still to be (or that were) sent."""
    held = (
        select(Contact.chunk_id, func.count().label("held"))
        .where(Contact.campaign_id == campaign.id, Contact.status.not_in(LEFT_THEIR_CHUNK))
        .group_by(Contact.chunk_id).subquery()
    )
    holding = func.coalesce(held.c.held, 0)
    wrong = conn.execute(
        select(Chunk.id, Chunk.status, Chunk.contact_count, holding)
        .outerjoin(held, held.c.chunk_id == Chunk.id)
        .where(Chunk.campaign_id == campaign.id, Chunk.status != K.SPLIT.value, Chunk.contact_count != holding)
        .order_by(Chunk.id)
    ).all()
    if not wrong:
        return []
    shown = [f"chunk {i} ({status}) says {said}, holds {count}" for i, status, said, count in wrong]
    return [f"{len(wrong)} chunks' contact_count differs from the contacts they hold "
            f"(suppressed and recently_contacted not counted): {_examples(shown)}"]


def chunk_submissions(conn: Connection, campaign: Any) -> list[str]:
    """Every attempt of a claimed chunk has its submission row; only a submitting chunk awaits an answer."""
    rows = _chunks_with_submissions(conn, campaign.id)
    rules: list[tuple[str, Callable[[Row[Any]], bool]]] = [
        ("have fewer submission rows than attempts", lambda r: r.rows < r.attempts),
        (f"are {'/'.join(sorted(CLAIMED))} (so were claimed) but have no submission row",
         lambda r: r.status in CLAIMED and r.rows == 0),
        ("are succeeded without an accepted submission",
         lambda r: r.status == K.SUCCEEDED.value and r.accepted == 0),
        ("have an accepted submission (their calls were queued) but are not succeeded",
         lambda r: r.status != K.SUCCEEDED.value and r.accepted > 0),
        ("are submitting without exactly one 'sending' submission",
         lambda r: r.status == K.SUBMITTING.value and r.sending != 1),
        ("are not submitting but have a 'sending' submission",
         lambda r: r.status != K.SUBMITTING.value and r.sending > 0),
    ]
    lines = []
    for words, broken in rules:
        bad = [_describe_chunk(r) for r in rows if broken(r)]
        if bad:
            lines.append(f"{len(bad)} chunks {words}: {_examples(bad)}")
    return lines


def chunk_counters(conn: Connection, campaign: Any) -> list[str]:
    """The campaign's chunk counters and contacts_queued, as ledger.refresh computes them."""
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for status, count, contacts in conn.execute(
        select(Chunk.status, func.count(), func.coalesce(func.sum(Chunk.contact_count), 0))
        .where(Chunk.campaign_id == campaign.id).group_by(Chunk.status)
    ).all():
        counts[status], sizes[status] = count, int(contacts)
    expected = {f"chunks_{s}": (counts.get(s, 0), f"chunks are {s}") for s in COUNTED_CHUNKS}
    expected["chunks_pending"] = (sum(counts.get(s, 0) for s in OPEN), "chunks are pending or submitting")
    expected["chunks_total"] = (sum(n for s, n in counts.items() if s != K.SPLIT.value), "chunks are not split")
    expected["contacts_queued"] = (sizes.get(K.SUCCEEDED.value, 0), "contacts are in succeeded chunks")
    return [f"{column} is {getattr(campaign, column)} but {rows} {what}"
            for column, (rows, what) in expected.items() if getattr(campaign, column) != rows]


def queued_contacts(conn: Connection, campaign: Any) -> list[str]:
    queued = conn.scalar(select(func.count()).where(Contact.campaign_id == campaign.id,
                                                    Contact.status == C.QUEUED.value))
    if queued == campaign.contacts_queued:
        return []
    return [f"contacts_queued is {campaign.contacts_queued} but {queued} contacts rows are queued"]


def nothing_left_open(conn: Connection, campaign: Any) -> list[str]:
    """A final campaign sends nothing more: no chunk waits (a cancelled or failed one may await an answer)."""
    if campaign.status not in FINAL:
        return []
    left = OPEN if campaign.status not in STOPPED else (K.PENDING.value,)
    found = _count_by(conn, Chunk.status, Chunk.campaign_id == campaign.id, Chunk.status.in_(left))
    if not found:
        return []
    waiting = conn.scalar(select(func.count()).select_from(Contact).join(Chunk, Chunk.id == Contact.chunk_id).where(
        Chunk.campaign_id == campaign.id, Chunk.status.in_(left), Contact.status == C.PENDING.value))
    return [f"campaign is {campaign.status} but {sum(found.values())} chunks are still open ({_listing(found)}), "
            f"holding {waiting} pending contacts"]


ALWAYS: tuple[Check, ...] = (contact_totals, contacts_agree_with_chunks, contacts_without_chunk, chunk_sizes,
                             chunk_submissions)
SETTLED: tuple[Check, ...] = (chunk_counters, queued_contacts, nothing_left_open)


# -- helpers -----------------------------------------------------------------------


def _snapshot(conn: Connection) -> None:
    """PostgreSQL: every rule reads one snapshot, so a running daemon's commits cannot
    show up as a discrepancy between two queries (SQLite's read transaction is one already)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))


def _settled(conn: Connection, campaign: Any) -> bool:
    if campaign.status not in FINAL:
        return False
    awaiting = conn.scalar(select(Chunk.id).where(Chunk.campaign_id == campaign.id,
                                                  Chunk.status == K.SUBMITTING.value).limit(1))
    return awaiting is None


def _campaign(conn: Connection, campaign_id: int) -> Any:
    row = conn.execute(select(Campaign.__table__).where(Campaign.id == campaign_id)).first()
    if row is None:
        raise NotFound(f"no campaign with id {campaign_id}")
    return row


def _chunks_with_submissions(conn: Connection, campaign_id: int) -> Sequence[Row[Any]]:
    def outcome_is(*outcomes: Outcome) -> Any:
        return func.coalesce(func.sum(case((Submission.outcome.in_([o.value for o in outcomes]), 1), else_=0)), 0)

    # a reconciled row (a call result proved an unknown chunk queued) counts as accepted
    per_chunk = (
        select(Submission.chunk_id, func.count().label("rows"), outcome_is(Outcome.SENDING).label("sending"),
               outcome_is(Outcome.ACCEPTED, Outcome.RECONCILED).label("accepted"))
        .where(Submission.campaign_id == campaign_id).group_by(Submission.chunk_id).subquery()
    )
    return conn.execute(
        select(Chunk.id, Chunk.status, Chunk.attempts, func.coalesce(per_chunk.c.rows, 0).label("rows"),
               func.coalesce(per_chunk.c.sending, 0).label("sending"),
               func.coalesce(per_chunk.c.accepted, 0).label("accepted"))
        .outerjoin(per_chunk, per_chunk.c.chunk_id == Chunk.id)
        .where(Chunk.campaign_id == campaign_id).order_by(Chunk.id)
    ).all()


def _describe_chunk(row: Row[Any]) -> str:
    return (f"chunk {row.id} ({row.status}, attempts {row.attempts}, {row.rows} submissions, "
            f"{row.sending} sending, {row.accepted} accepted)")


def _count_by(conn: Connection, column: Any, *where: Any) -> dict[str, int]:
    return {key: count for key, count in conn.execute(select(column, func.count()).where(*where).group_by(column))}


def _listing(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {count}" for status, count in sorted(counts.items())) or "none"


def _allowed(chunk_status: str) -> str:
    return "/".join(sorted(CONTACTS_OF_CHUNK.get(chunk_status, frozenset()) | LEFT_THEIR_CHUNK))


def _examples(items: list[str]) -> str:
    more = f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else ""
    return "; ".join(items[:EXAMPLES]) + more
