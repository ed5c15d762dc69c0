"""The chunk state machine, as a table: every pair of statuses either may follow or raises."""

import itertools

import pytest

from scheduler.models import ChunkStatus as C
from scheduler.models import ContactStatus as K
from scheduler.states import CHUNK_TRANSITIONS, CONTACT_OF, IllegalTransition, check_move, sources_for

ALLOWED = {
    (C.PENDING, C.SUBMITTING), (C.PENDING, C.CANCELLED), (C.PENDING, C.EXPIRED), (C.PENDING, C.SUCCEEDED),
    (C.SUBMITTING, C.PENDING), (C.SUBMITTING, C.SUCCEEDED), (C.SUBMITTING, C.FAILED),
    (C.SUBMITTING, C.REJECTED), (C.SUBMITTING, C.SPLIT), (C.SUBMITTING, C.UNKNOWN), (C.SUBMITTING, C.EXPIRED),
    (C.UNKNOWN, C.PENDING), (C.UNKNOWN, C.SUCCEEDED), (C.UNKNOWN, C.FAILED), (C.UNKNOWN, C.REJECTED),
    (C.UNKNOWN, C.SPLIT),
    # a late acceptance of the chunk's last request, before any new claim (ledger.record's fence)
    (C.CANCELLED, C.SUCCEEDED), (C.EXPIRED, C.SUCCEEDED),
}


@pytest.mark.parametrize("source, target", list(itertools.product(C, C)))
def test_every_pair_is_allowed_or_raises(source, target):
    if (source, target) in ALLOWED:
        check_move((source,), target)
    else:
        with pytest.raises(IllegalTransition, match=f"from {source.value} to {target.value}"):
            check_move((source,), target)


def test_final_statuses_never_move_but_for_a_late_acceptance_and_every_status_is_in_the_table():
    assert set(CHUNK_TRANSITIONS) == set(C)
    for final in (C.SUCCEEDED, C.FAILED, C.REJECTED, C.SPLIT):
        assert CHUNK_TRANSITIONS[final] == frozenset()
    for final in (C.EXPIRED, C.CANCELLED):
        assert CHUNK_TRANSITIONS[final] == frozenset({C.SUCCEEDED})


@pytest.mark.parametrize("target, sources", [
    (C.UNKNOWN, (C.SUBMITTING,)),  # a late "unknown" answer leaves an unknown chunk as it is
    (C.SUCCEEDED, (C.SUBMITTING, C.UNKNOWN)),
    (C.PENDING, (C.SUBMITTING, C.UNKNOWN)),
])
def test_an_answer_moves_submitting_and_unknown_chunks(target, sources):
    assert sources_for(target, (C.SUBMITTING, C.UNKNOWN)) == sources


@pytest.mark.parametrize("chunk, contact", [
    (C.SUCCEEDED, K.QUEUED), (C.FAILED, K.FAILED), (C.REJECTED, K.REJECTED), (C.UNKNOWN, K.UNKNOWN),
    (C.EXPIRED, K.EXPIRED), (C.CANCELLED, K.CANCELLED), (C.PENDING, K.PENDING), (C.SPLIT, K.PENDING),
    (C.SUBMITTING, None),
])
def test_contacts_follow_their_chunk(chunk, contact):
    assert CONTACT_OF[chunk] is contact
