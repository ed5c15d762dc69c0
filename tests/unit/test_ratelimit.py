"""The limiter with a fake clock: no real sleeps, no flakiness."""

import asyncio

import pytest

from scheduler.ratelimit import RateLimiter
from scheduler.simulator import max_in_window


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds


async def grant_times(rate, count, margin=0.0, jitter=None):
    clock = FakeClock()
    limiter = RateLimiter(rate, margin, clock=clock, sleep=clock.sleep)
    times = []
    for i in range(count):
        await limiter.acquire()
        times.append(clock.now + (jitter(i) if jitter else 0.0))
    return times, limiter


@pytest.mark.parametrize("rate", [0.5, 1, 2, 5, 20, 50, 100])
async def test_no_burst_and_never_more_than_rate_in_any_second(rate):
    times, _ = await grant_times(rate, 400, margin=0.001)
    assert max_in_window(times, 1.0) <= max(1, int(rate))
    # the first second already obeys the limit
    assert sum(1 for t in times if t - times[0] < 1.0) <= max(1, int(rate))


@pytest.mark.parametrize("rate", [5, 20, 100])
async def test_long_run_rate_is_the_configured_rate_less_the_margin(rate):
    times, _ = await grant_times(rate, 1000, margin=0.01)
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert achieved == pytest.approx(rate / 1.01, rel=1e-6)


async def test_margin_absorbs_jitter_between_grant_and_arrival():
    jitter = lambda i: 0.009 if i % 2 else 0.0  # noqa: E731 - alternate late arrivals
    times, _ = await grant_times(50, 1000, margin=0.01, jitter=jitter)
    assert max_in_window(times, 1.0) <= 50


async def test_idle_time_earns_no_burst():
    clock = FakeClock()
    limiter = RateLimiter(10, 0.001, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    clock.now += 60  # idle for a minute
    times = []
    for _ in range(20):
        await limiter.acquire()
        times.append(clock.now)
    assert max_in_window(times, 1.0) <= 10


async def test_concurrent_waiters_are_spaced_too():
    clock = FakeClock()
    limiter = RateLimiter(4, clock=clock, sleep=clock.sleep)
    times = []

    async def one():
        await limiter.acquire()
        times.append(clock.now)

    await asyncio.gather(*(one() for _ in range(12)))
    assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [0.25] * 11


async def test_reconfigure_changes_spacing():
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    limiter.configure(10)
    await limiter.acquire()
    first = clock.now
    await limiter.acquire()
    assert clock.now - first == pytest.approx(0.1)


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(0)


async def test_late_wake_ups_never_put_more_than_rate_in_a_window_and_the_schedule_catches_up():
    clock = FakeClock()
    limiter = RateLimiter(10, 0.01, clock=clock, sleep=clock.sleep)
    sent = []
    rand = __import__("random").Random(5)
    for _ in range(500):
        slot = await limiter.reserve(lead_seconds=0.05)
        clock.now = max(clock.now, slot) + rand.choice([0, 0, 0, 0.03, 0.08])  # some senders wake late
        await limiter.wait_until(slot)
        sent.append(clock.now)
    assert max_in_window(sent, 1.01) <= 10
    assert max_in_window(sent, 1.0) <= 10
    achieved = (len(sent) - 1) / (sent[-1] - sent[0])
    assert achieved > 10 / 1.01 * 0.97  # lateness is not paid for with throughput


def test_clock_offset_takes_the_sample_with_the_shortest_return_delay():
    from scheduler.ratelimit import ClockOffset

    now = [1000.0]
    offset = ClockOffset(window=3, clock=lambda: now[0])
    assert offset.seconds == 0.0
    # the database is 2.0 s ahead; answers reach us 0.030, 0.002 and 0.010 s after it read its clock
    for delay in (0.030, 0.002, 0.010):
        offset.observe(now[0] - delay + 2.0)
    assert abs(offset.seconds - (2.0 - 0.002)) < 1e-9
    assert abs(offset.seconds_until(now[0] + 2.5) - 0.502) < 1e-9
    for delay in (0.5, 0.5, 0.5):  # the old best sample falls out of the window
        offset.observe(now[0] - delay + 2.0)
    assert abs(offset.seconds - 1.5) < 1e-9


# (booked_at, slot, left_at, sent_at) of consecutive requests -> what each pushes the schedule by
# (threshold 5 ms: half of the default margin; only lateness beyond it is pushed)
LATE_CASES = {
    "on time": ([(0.0, 1.0, 1.0, 1.0)], [0.0]),
    "late within the threshold": ([(0.0, 1.0, 1.004, 1.005)], [0.0]),
    "left 30 ms late": ([(0.0, 1.0, 1.03, 1.031)], [0.026]),
    # a daemon's first request has no usual transit to compare with: all of it counts (a joining
    # daemon's cold first request took 13 ms to be written here, and put 21 in one second at R=20)
    "a joining daemon's slow first write": ([(0.0, 1.0, 1.0, 1.013), (1.5, 2.0, 2.0, 2.001)], [0.008, 0.0]),
    # every request pays 40 ms to connect (TLS to Plum): once that is the usual, nothing to push
    "a constant connect time": ([(0.0, 1.0, 1.0, 1.04), (1.05, 1.1, 1.1, 1.14), (1.15, 1.2, 1.2, 1.2405)],
                                [0.035, 0.0, 0.0]),
    # ... but a connect that takes 25 ms longer than usual is lateness
    "a slow connect": ([(0.0, 1.0, 1.0, 1.04), (1.05, 1.1, 1.1, 1.165)], [0.035, 0.02]),
    # ordinary jitter of the write (1 ms against a usual 3 ms) is not lateness: the usual is
    # the median, not the fastest one seen
    "ordinary write jitter": ([(0.0, 1.0, 1.0035, 1.0065), (1.05, 1.1, 1.1035, 1.1045), (1.15, 1.2, 1.2035, 1.2065),
                               (1.25, 1.3, 1.3035, 1.3065), (1.35, 1.4, 1.4035, 1.4065)],
                              [0.0015, 0.0, 0.0, 0.0, 0.0]),
    # one stall delays three requests booked before it: the schedule moves by the largest, not the sum
    "one stall, three requests": ([(0.0, 1.0, 1.06, 1.061), (0.0, 1.02, 1.061, 1.062), (0.0, 1.04, 1.062, 1.063)],
                                  [0.056, 0.0, 0.0]),
    # a request booked after an earlier push owes its own lateness in full
    "two stalls": ([(0.0, 1.0, 1.05, 1.051), (1.5, 2.0, 2.04, 2.041)], [0.046, 0.035]),
    "a push is capped at 1 s": ([(0.0, 1.0, 4.0, 4.001)], [1.0]),
}


@pytest.mark.parametrize("requests, pushes", LATE_CASES.values(), ids=LATE_CASES.keys())
def test_how_far_a_late_request_moves_the_schedule(requests, pushes):
    from scheduler.ratelimit import LatePushes

    late = LatePushes(threshold_seconds=0.005)
    got = [late.owed(*request) for request in requests]
    assert got == pytest.approx(pushes, abs=1e-9)


async def test_a_slot_that_passed_before_the_claim_came_back_stays_in_the_past():
    """The request's lateness counts from the account's schedule: a slot turned into 'now'
    would hide a slow claim's lateness, and no push would keep another daemon's request R slots
    on out of its second."""
    import time

    from scheduler.dispatcher import Dispatcher
    from scheduler.ledger import Slot
    from tests.support.harness import settings_for

    dispatcher = Dispatcher(None, None, settings_for("sqlite+aiosqlite:///unused", "http://127.0.0.1:9/api"),  # type: ignore[arg-type]
                            "w")
    loop = asyncio.get_running_loop()
    dispatcher._db_clock.observe(time.time())  # one quick answer: the database's clock is ours
    now_epoch, now_loop = time.time(), loop.time()
    # booked 2 ms ahead of the database's clock, but the answer took 32 ms to come back
    local = dispatcher._local_slot(Slot(at_epoch=now_epoch - 0.030, db_now_epoch=now_epoch - 0.032))
    assert local == pytest.approx(now_loop - 0.030, abs=0.002)
    ahead = dispatcher._local_slot(Slot(at_epoch=now_epoch + 0.5, db_now_epoch=now_epoch))
    assert ahead == pytest.approx(now_loop + 0.5, abs=0.002)


# answer times seen (seconds), places in flight -> seconds between two of this daemon's requests
SPACING_CASES = {
    "no answer yet: the first round goes at once": ([], 16, 0.0),
    "100 ms answers, 16 places": ([0.1], 16, 0.1 / 32),
    "the fastest recent answer counts": ([0.15, 0.1, 0.12], 16, 0.1 / 32),
    "64 places": ([0.1], 64, 0.1 / 128),
    "a slow Plum: 20 s answers, 4 places": ([20.0], 4, 2.5),
    "no places (misconfigured): no spacing": ([0.1], 0, 0.0),
}


@pytest.mark.parametrize("answers, places, spacing", SPACING_CASES.values(), ids=SPACING_CASES.keys())
def test_requests_are_spread_over_half_an_answer_time(answers, places, spacing):
    from scheduler.ratelimit import AnswerSpacing

    spread = AnswerSpacing()
    for seconds in answers:
        spread.observe(seconds)
    assert spread.seconds(places) == pytest.approx(spacing)
    # so a full set of places leaves within half an answer's time: the in-flight-bound rate
    # (places / answer time) is never lowered by it
    assert places * spread.seconds(places) <= min(answers, default=0.0) / 2 + 1e-12


def test_an_old_fast_answer_falls_out_of_the_spacing():
    from scheduler.ratelimit import AnswerSpacing

    spread = AnswerSpacing(samples=3)
    for seconds in (0.01, 0.2, 0.2, 0.2):
        spread.observe(seconds)
    assert spread.seconds(4) == pytest.approx(0.2 / 8)  # the 10 ms answer is forgotten


def test_spacing_never_shortens_the_rate_limit_interval():
    from scheduler.dispatcher import Dispatcher
    from tests.support.harness import settings_for

    settings = settings_for("sqlite+aiosqlite:///unused", "http://127.0.0.1:9/api", rate_limit_per_second=10,
                            max_concurrency=4)
    dispatcher = Dispatcher(None, None, settings, "w")  # type: ignore[arg-type]
    rate_interval = dispatcher.limiter.interval_seconds
    assert dispatcher._interval() == rate_interval
    dispatcher.spacing.observe(0.05)  # fast answers: spacing 6 ms, the rate's ~100 ms wins
    assert dispatcher._interval() == rate_interval
    assert dispatcher.limits().interval_seconds == rate_interval
    dispatcher.spacing = type(dispatcher.spacing)()
    dispatcher.spacing.observe(8.0)  # slow answers: 1 s between requests, slower than the rate
    assert dispatcher._interval() == pytest.approx(1.0)
    assert dispatcher.limits().interval_seconds == pytest.approx(1.0)  # the account's slots too
