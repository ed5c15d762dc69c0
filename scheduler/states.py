"""The chunk state machine: which status may follow which, as data.

Every change of a chunk's status goes through ``ledger.move_chunks``, which
checks its move against this table before it writes (and writes only rows
still in the allowed "from" statuses), so no path can make a move the table
does not list. A contact's status follows its chunk's (``CONTACT_OF``).
"""

from __future__ import annotations

from .models import ChunkStatus as C
from .models import ContactStatus as K

FINAL_CHUNK = frozenset({C.SUCCEEDED, C.FAILED, C.REJECTED, C.SPLIT, C.EXPIRED, C.CANCELLED})

# An answer that arrives for an `unknown` chunk (another daemon declared it so while
# its request was still out) is the truth and is recorded, so `unknown` moves like
# `submitting` does on an answer; an admin's resend moves it back to `pending`.
ON_ANSWER = frozenset({C.PENDING, C.SUCCEEDED, C.FAILED, C.REJECTED, C.SPLIT, C.UNKNOWN})

# -> succeeded from pending, cancelled or expired: Plum accepted the chunk's last request
# after it had been declared unknown and then resent, cancelled or expired, before any new
# claim. Its calls are queued; the ledger says so rather than send them again. This is the
# one move out of a final status.
LATE_ACCEPTANCE = frozenset({C.PENDING, C.CANCELLED, C.EXPIRED})

CHUNK_TRANSITIONS: dict[C, frozenset[C]] = {
    C.PENDING: frozenset({C.SUBMITTING, C.CANCELLED, C.EXPIRED, C.SUCCEEDED}),
    C.SUBMITTING: ON_ANSWER | {C.EXPIRED},  # expired: given back unsent after end_at
    C.UNKNOWN: ON_ANSWER - {C.UNKNOWN},
    **{final: frozenset() for final in FINAL_CHUNK},
    C.CANCELLED: frozenset({C.SUCCEEDED}),
    C.EXPIRED: frozenset({C.SUCCEEDED}),
}
# Where an answer to a claim can find its chunk (see ledger.record's fence).
ANSWERABLE = (C.SUBMITTING, C.UNKNOWN, *sorted(LATE_ACCEPTANCE))

# What a chunk's pending contacts become when the chunk moves (None: they stay pending).
CONTACT_OF: dict[C, K | None] = {
    C.SUBMITTING: None,
    C.PENDING: K.PENDING, C.SPLIT: K.PENDING,  # (from unknown) a split chunk's contacts then move to its halves
    C.SUCCEEDED: K.QUEUED, C.FAILED: K.FAILED, C.REJECTED: K.REJECTED, C.UNKNOWN: K.UNKNOWN,
    C.EXPIRED: K.EXPIRED, C.CANCELLED: K.CANCELLED,
}


# The contacts a chunk move takes along: those waiting with it, or written off with it.
MOVING_CONTACTS = (K.PENDING, K.UNKNOWN)


def contacts_of(sources: tuple[C, ...]) -> frozenset[K]:
    """The contact statuses that follow a chunk leaving ``sources`` (suppressed and recently
    contacted ones were taken out of the chunk and stay as they are)."""
    found = set(MOVING_CONTACTS)
    for source in sources:
        if CONTACT_OF[source] is not None:
            found.add(CONTACT_OF[source])  # type: ignore[arg-type]
        if source is C.EXPIRED:
            found.add(K.OUT_OF_WINDOW)
    return frozenset(found)


def sources_for(target: C, candidates: tuple[C, ...]) -> tuple[C, ...]:
    """Of ``candidates``, the statuses that may move to ``target``."""
    return tuple(source for source in candidates if target in CHUNK_TRANSITIONS[source])


class IllegalTransition(RuntimeError):
    """A code path tried a move the table does not allow: a bug, never an admin's doing."""


def check_move(sources: tuple[C, ...], target: C) -> None:
    """Raise unless every one of ``sources`` may move to ``target``."""
    bad = [source.value for source in sources if target not in CHUNK_TRANSITIONS[source]]
    if bad:
        raise IllegalTransition(f"a chunk cannot go from {', '.join(bad)} to {target.value}")
