"""Who a daemon is, and whether another one is alive: pure decisions on heartbeat rows.

Every daemon writes its heartbeat each tick. One whose heartbeat is older
than DEAD_AFTER_POLLS poll intervals (or that stopped cleanly) is dead: its
claims are declared unknown and its ingestion is restarted by another.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

from .models import Worker

DEAD_AFTER_POLLS = 3


def package_version() -> str:
    try:
        return metadata.version("insight-scheduler")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "source"


def default_worker_id() -> str:
    """Unique per process: two daemons on one host never share an id by default."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def dead_before(now: datetime, poll_interval_seconds: float) -> datetime:
    """A heartbeat older than this is a dead daemon's."""
    return now - timedelta(seconds=DEAD_AFTER_POLLS * poll_interval_seconds)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder_alive(row: Worker | None, now: datetime, poll_interval_seconds: float, host: str,
                 is_alive: Callable[[int], bool] = pid_alive) -> bool:
    """Is a live daemon running under this heartbeat row? A process on this host that no
    longer exists is not (a restart right after kill -9 reuses its id at once)."""
    if row is None or row.stopped_at is not None or row.last_tick_at is None:
        return False
    if row.last_tick_at < dead_before(now, poll_interval_seconds):
        return False
    return not (row.host == host and row.pid is not None and not is_alive(row.pid))


def process_space() -> str | None:
    """This process's pid space: the boot id and the pid namespace (None where /proc lacks them).
    Two daemons with the same one see each other's processes; a hostname alone does not say
    that (containers sharing the host's name have pid namespaces of their own)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def gone_at_once(rows: Iterable[Worker], space: str | None, me: str,
                 is_alive: Callable[[int], bool] = pid_alive) -> list[str]:
    """Daemons not stopped cleanly whose process, in this process's pid space, no longer exists
    (killed -9): dead now, whatever their last heartbeat says."""
    if space is None:
        return []
    return [row.worker_id for row in rows
            if row.worker_id != me and row.process_space == space and row.stopped_at is None
            and row.pid is not None and not is_alive(row.pid)]


def id_in_use_message(worker_id: str, row: Worker) -> str:
    return (f"scheduler.worker_id: {worker_id!r} is in use by a live daemon (host {row.host or '?'}, "
            f"pid {row.pid or '?'}, last tick {row.last_tick_at:%Y-%m-%d %H:%M:%S} UTC): give each daemon "
            "its own id, or leave scheduler.worker_id unset (each process then gets a unique one)")


def state_of(row: Worker, now: datetime, poll_interval_seconds: float) -> str:
    """'alive', 'stopped' (a clean stop) or 'dead' (no heartbeat for 3 poll intervals)."""
    if row.stopped_at is not None:
        return "stopped"
    if row.last_tick_at is None or row.last_tick_at < dead_before(now, poll_interval_seconds):
        return "dead"
    return "alive"
