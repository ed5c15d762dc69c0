"""The account-level circuit breaker: when Plum fails request after request, stop
sending, probe with one request at a time, and resume when a probe is accepted.

Pure state: the dispatcher feeds it what Plum answered and asks it whether a
request may leave; times are the caller's (a monotonic clock for waiting, wall
time for what admins read). Failures while it is open do not count against a
chunk's ``max_tries``: the outage is Plum's, not the chunk's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from .config import OutageSettings
from .models import Outcome


def account_key(base_url: str, username: str) -> str:
    """One Plum account: the circuit breaker (and its row in plum_accounts) is per account."""
    return f"{base_url.rstrip('/')} {username}"


class Health(str, enum.Enum):
    """What one answer says about Plum as a whole."""

    UP = "up"  # Plum answered and decided (accepted, refused, auth, ...)
    DOWN = "down"  # 5xx, 429, connection refused/reset, timeouts
    NEUTRAL = "neutral"  # nothing reached Plum (refused before sending)


def health_of(outcome: Outcome, status_code: int | None) -> Health:
    if outcome in (Outcome.RETRYABLE, Outcome.UNKNOWN):
        return Health.DOWN
    if outcome is Outcome.CLIENT_BUG and status_code is None:
        return Health.NEUTRAL
    return Health.UP


class Permit(str, enum.Enum):
    NORMAL = "normal"
    PROBE = "probe"


@dataclass(frozen=True)
class Change:
    """A transition the caller logs and stores (opened / closed)."""

    opened: bool
    since: datetime
    probes: int
    last_error: str
    outage_seconds: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """What admins see: `campaign list`, `/readyz`, the plum_accounts row."""

    open: bool
    since: datetime | None
    probes: int
    last_error: str | None
    hold_until: datetime | None  # a Retry-After that holds the whole account

    def describe(self) -> str:
        if not self.open or self.since is None:
            return "Plum accepting requests"
        return (f"waiting for Plum since {self.since:%H:%M:%S} UTC ({self.probes} probes); "
                f"last error: {self.last_error}")


class Breaker:
    """One per Plum account (base URL + user)."""

    def __init__(self, settings: OutageSettings) -> None:
        self.settings = settings
        self.failures_in_a_row = 0
        self.is_open = False
        self.since: datetime | None = None
        self.probes = 0
        self.probe_in_flight = False
        self.last_error: str | None = None
        self._interval = settings.initial_probe_interval_seconds
        self._next_probe_at = 0.0  # monotonic
        self._probe_started = 0.0
        self._hold_until = 0.0  # monotonic: Retry-After for the whole account
        self._hold_until_wall: datetime | None = None

    def reconfigure(self, settings: OutageSettings) -> None:
        self.settings = settings
        self._interval = min(self._interval, settings.max_probe_interval_seconds)

    # -- asking ------------------------------------------------------------------

    def wait_seconds(self, now: float) -> float:
        """0 when a request may be claimed now; else how long until one may."""
        held = max(0.0, self._hold_until - now)
        if not self.is_open:
            return held
        if self.probe_in_flight:
            return max(held, self.settings.max_probe_interval_seconds)  # woken by the probe's answer
        return max(held, self._next_probe_at - now)

    def permit(self, now: float) -> Permit | None:
        """Take a permit for one request (a probe when open), or None to wait."""
        if self.wait_seconds(now) > 0:
            return None
        if not self.is_open:
            return Permit.NORMAL
        self.probe_in_flight = True
        self.probes += 1
        self._probe_started = now
        return Permit.PROBE

    def still_permits(self, permit: Permit) -> bool:
        """Just before sending: a normal request claimed before the breaker opened stays home."""
        return permit is Permit.PROBE or not self.is_open

    def give_back(self, permit: Permit) -> None:
        """The permit was not used (no chunk ready, shutdown): nothing was sent."""
        if permit is Permit.PROBE and self.probe_in_flight:
            self.probe_in_flight = False
            self.probes -= 1

    # -- learning ----------------------------------------------------------------

    def hold(self, retry_after_seconds: float, now: float, wall_now: datetime) -> None:
        """Plum asked for a pause (Retry-After on 429/503): no request for the account until then."""
        if now + retry_after_seconds > self._hold_until:
            self._hold_until = now + retry_after_seconds
            self._hold_until_wall = wall_now + timedelta(seconds=retry_after_seconds)

    def observe(self, health: Health, error: str | None, permit: Permit, now: float,
                wall_now: datetime) -> Change | None:
        """One answer; returns the transition it caused, if any."""
        if permit is Permit.PROBE:
            self.probe_in_flight = False
        if health is Health.NEUTRAL:
            return None
        if health is Health.UP:
            return self._close(wall_now)
        self.failures_in_a_row += 1
        self.last_error = error or "no answer"
        if self.is_open:
            if permit is Permit.PROBE:
                # counted from when the probe left, so Plum back just after a failed probe waits
                # at most max_probe_interval_seconds for the next one
                self._interval = min(self._interval * 2, self.settings.max_probe_interval_seconds)
                self._next_probe_at = self._probe_started + self._interval
            return None
        if self.failures_in_a_row < self.settings.failure_threshold:
            return None
        self.is_open, self.since, self.probes = True, wall_now, 0
        self._interval = min(self.settings.initial_probe_interval_seconds, self.settings.max_probe_interval_seconds)
        self._next_probe_at = now + self._interval
        return Change(True, wall_now, 0, self.last_error)

    def counts_against_chunk(self) -> bool:
        """After observing a failure: does it use up one of the chunk's tries? Only while Plum
        is otherwise accepting requests (the breaker stayed closed)."""
        return not self.is_open

    def _close(self, wall_now: datetime) -> Change | None:
        self.failures_in_a_row = 0
        if not self.is_open:
            return None
        assert self.since is not None
        change = Change(False, self.since, self.probes, self.last_error or "",
                        (wall_now - self.since).total_seconds())
        self.is_open, self.probe_in_flight = False, False
        self.since = None
        self._interval = self.settings.initial_probe_interval_seconds
        return change

    def snapshot(self, now: float) -> Snapshot:
        hold = self._hold_until_wall if self._hold_until > now else None
        return Snapshot(self.is_open, self.since, self.probes, self.last_error if self.is_open else None, hold)
