"""Request pacing: a GCRA with a burst of one, so grants are evenly spaced.

aiolimiter's leaky bucket lets a full bucket through at start-up, which puts
up to twice the rate into the first second; Plum counts requests per second,
so we space every grant by ``(1 + margin) / rate`` from the very first one.
At most ``ceil(rate)`` grants then fall in any one-second window, even with
``margin`` seconds of jitter between a grant and the request reaching Plum.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Awaitable, Callable


CATCH_UP_SPACING = 0.5  # of an interval, between sends that catch up after a late wake-up
# Requests are spread over 1/this of an answer's time (see AnswerSpacing).
SPREAD_SHARE = 2


class RateLimiter:
    def __init__(
        self,
        rate_per_second: float,
        margin_seconds: float = 0.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._next_allowed = 0.0  # the theoretical arrival time of the next grant
        self._lock = asyncio.Lock()
        self.waited_seconds = 0.0
        self.configure(rate_per_second, margin_seconds)

    def configure(self, rate_per_second: float, margin_seconds: float = 0.0) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be > 0")
        self.rate_per_second = rate_per_second
        self.interval_seconds = (1.0 + margin_seconds) / rate_per_second
        self._window_seconds = 1.0 + margin_seconds
        # the most recent sends, as many as one window may hold
        self._sent: deque[float] = deque(maxlen=max(1, math.ceil(rate_per_second)))

    async def acquire(self) -> None:
        """Wait for the next slot."""
        await self.wait_until(await self.reserve(lead_seconds=0.0))

    async def reserve(self, lead_seconds: float | None = None) -> float:
        """Book the next slot and return its time, waking ``lead_seconds`` before it.

        The caller prepares its request in the lead time and then calls
        ``wait_until(slot)``: the request then leaves at the slot itself, not
        after a variable amount of preparation.
        """
        lead = self.interval_seconds if lead_seconds is None else lead_seconds
        # The lock keeps slots in booking order: waiters queue rather than race.
        async with self._lock:
            now = self._clock()
            slot = max(self._next_allowed, now)
            if slot - lead > now:
                self.waited_seconds += slot - lead - now
                await self._sleep(slot - lead - now)
            # A late slot earns no credit for the time lost: spacing is kept.
            self._next_allowed = slot + self.interval_seconds
            return slot

    async def wait_until(self, slot: float) -> None:
        """Sleep until the slot, and until the last window has room for one more send.

        A busy event loop can wake a sender late; if the next one then left on
        time, the two would be closer than one interval. So the moments requests
        actually leave are also checked: never more than ``ceil(rate)`` of them
        within ``1 + margin`` seconds, and never closer than half an interval.
        Unlike pushing every later slot back, this lets the schedule catch up, so
        a late wake-up costs no throughput, without sending a burst.
        """
        while True:
            target = slot
            if self._sent:
                # catching up, but never in a burst: at least half an interval apart
                target = max(target, self._sent[-1] + self.interval_seconds * CATCH_UP_SPACING)
            if len(self._sent) == self._sent.maxlen:
                target = max(target, self._sent[0] + self._window_seconds + 1e-9)
            delay = target - self._clock()
            if delay <= 0:
                break
            await self._sleep(delay)
        self._sent.append(self._clock())


class ClockOffset:
    """The database's clock minus ours, from the times it reports (NTP's trick, one-way):
    a sample ``db_now - our_time_after`` is the offset minus the time the answer took to
    reach us, so the largest recent sample is the best estimate. On one host it is ~0."""

    def __init__(self, window: int = 64, clock: Callable[[], float] = time.time) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._clock = clock

    def observe(self, db_now_epoch: float) -> None:
        self._samples.append(db_now_epoch - self._clock())

    @property
    def seconds(self) -> float:
        return max(self._samples) if self._samples else 0.0

    def seconds_until(self, db_epoch: float) -> float:
        """From now (our clock) until that moment of the database's clock."""
        return db_epoch - self.seconds - self._clock()


class LatePushes:
    """How far a request that left late moves the account's shared schedule (its later slots).

    Its lateness is how long after its slot this daemon let it go, plus how much longer than
    usual its bytes took to be written (``sent_at``: once aiohttp has handed them to the
    kernel). The usual is the median of the last requests' times: a connect time every request
    pays (TLS to Plum) delays all of them alike, keeps them evenly spaced, and needs no push;
    with the fastest as the usual instead, a millisecond of ordinary event-loop jitter pushed
    one request in five and cost ~0.5% of the rate at R=50-100. One stall makes several
    requests late together, all booked before the first push: a push already made after a
    request was booked counts against its own, so the schedule moves by the largest lateness,
    not the sum. Lateness up to ``threshold_seconds`` (a share of the margin) is left to the
    margin; only what exceeds it is pushed.
    """

    def __init__(self, threshold_seconds: float, max_push_seconds: float = 1.0, transit_samples: int = 16,
                 memory_seconds: float = 5.0) -> None:
        self.threshold_seconds = threshold_seconds
        self.max_push_seconds = max_push_seconds
        self.memory_seconds = memory_seconds
        self._transits: deque[float] = deque(maxlen=transit_samples)
        self._pushes: deque[tuple[float, float]] = deque()  # (when made, seconds)

    def owed(self, booked_at: float, slot: float, left_at: float, sent_at: float) -> float:
        """Seconds to push the schedule by (0: none) for a request booked at ``booked_at`` for
        ``slot``, let go at ``left_at``, written at ``sent_at`` (one clock)."""
        transit = sent_at - left_at
        # The usual transit is learned from earlier requests only: a daemon's first request
        # (a cold connection pool, first-use code paths; 13 ms here) has none to compare with and
        # counts whole, or a joining daemon's slow first request would go unnoticed.
        usual = sorted(self._transits)[len(self._transits) // 2] if self._transits else 0.0  # the median
        self._transits.append(transit)
        late = (left_at - slot) + max(0.0, transit - usual)
        while self._pushes and self._pushes[0][0] < sent_at - self.memory_seconds:
            self._pushes.popleft()
        owed = (min(late - self.threshold_seconds, self.max_push_seconds)
                - sum(seconds for made, seconds in self._pushes if made > booked_at))
        if owed <= 0:
            return 0.0
        self._pushes.append((sent_at, owed))
        return owed


class AnswerSpacing:
    """How far apart this daemon's requests go when the rate limit would let them closer: the
    fastest recent answer's time over ``SPREAD_SHARE`` x the account's places in flight.

    Why: requests that leave together come back together (Plum's answer time varies little),
    and their answers then queue in this one event loop, each waiting for the others' writes
    and claims; the pattern repeats every round. With 16 in flight and 100 ms answers that
    queueing cost ~10% of the in-flight-bound rate (issue 15, bench row 2). Spread over half an
    answer's time, a full set of places still leaves well within one answer's time, so this
    never lowers the in-flight-bound rate (places / answer time); only the first round, before
    any answer, goes at once. The rate limit's own interval is never shortened by this.
    """

    def __init__(self, samples: int = 64) -> None:
        self._answer_seconds: deque[float] = deque(maxlen=samples)
        self._fastest: float | None = None  # (asked several times per request: kept, not searched)

    def observe(self, answer_seconds: float) -> None:
        self._answer_seconds.append(answer_seconds)
        self._fastest = min(self._answer_seconds)

    def seconds(self, places: int) -> float:
        if self._fastest is None or places < 1:
            return 0.0
        return self._fastest / (SPREAD_SHARE * places)
