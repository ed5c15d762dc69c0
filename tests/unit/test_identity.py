"""Which daemons are dead at once: a process in this pid space that no longer exists."""

from datetime import datetime, timezone

import pytest

from scheduler import identity
from scheduler.models import Worker

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
SPACE = "boot-1:4026531836"


def worker(worker_id, pid, space=SPACE, stopped=False):
    return Worker(worker_id=worker_id, pid=pid, process_space=space, last_tick_at=NOW,
                  stopped_at=NOW if stopped else None)


ALIVE = {100, 200}
CASES = {
    "its process is gone": ([worker("a", 300)], ["a"]),
    "its process runs": ([worker("a", 100)], []),
    "another pid space (a container with the same host name)": ([worker("a", 300, space="boot-1:999")], []),
    "another boot (the same host restarted)": ([worker("a", 300, space="boot-2:4026531836")], []),
    "no space recorded (an older daemon)": ([worker("a", 300, space=None)], []),
    "stopped cleanly: nothing of it is in flight": ([worker("a", 300, stopped=True)], []),
    "this daemon itself": ([worker("me", 300)], []),
}


@pytest.mark.parametrize("rows, gone", CASES.values(), ids=CASES.keys())
def test_gone_at_once(rows, gone):
    assert identity.gone_at_once(rows, SPACE, "me", is_alive=lambda pid: pid in ALIVE) == gone


def test_without_proc_nothing_is_judged_at_once():
    assert identity.gone_at_once([worker("a", 300)], None, "me", is_alive=lambda pid: False) == []


def test_this_process_has_a_space():
    space = identity.process_space()
    assert space is None or (":" in space and len(space) <= 128)
