"""The account-level circuit breaker and the outage rule for retries, as tables."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from scheduler.breaker import Breaker, Health, Permit, health_of
from scheduler.config import OutageSettings, RetrySettings
from scheduler.models import Outcome
from scheduler.retry import NextStep, Step, during_outage, next_step

WALL = datetime(2026, 12, 3, 14, 0, tzinfo=timezone.utc)
SETTINGS = OutageSettings(failure_threshold=3, initial_probe_interval_seconds=1, max_probe_interval_seconds=4)


@pytest.mark.parametrize("outcome, status, health", [
    (Outcome.ACCEPTED, 200, Health.UP),
    (Outcome.REJECTED, 400, Health.UP),
    (Outcome.AUTH, 401, Health.UP),
    (Outcome.CAMPAIGN_INVALID, 409, Health.UP),
    (Outcome.CLIENT_BUG, 415, Health.UP),
    (Outcome.CLIENT_BUG, None, Health.NEUTRAL),  # refused before sending: Plum never saw it
    (Outcome.RETRYABLE, 500, Health.DOWN),
    (Outcome.RETRYABLE, 503, Health.DOWN),
    (Outcome.RETRYABLE, 429, Health.DOWN),
    (Outcome.RETRYABLE, None, Health.DOWN),  # connection refused
    (Outcome.UNKNOWN, 502, Health.DOWN),
    (Outcome.UNKNOWN, None, Health.DOWN),  # timeout after sending
])
def test_what_an_answer_says_about_plum(outcome, status, health):
    assert health_of(outcome, status) is health


def fail(breaker: Breaker, now: float, permit: Permit = Permit.NORMAL):
    return breaker.observe(Health.DOWN, "HTTP 503", permit, now, WALL + timedelta(seconds=now))


def test_opens_after_the_threshold_of_failures_in_a_row_and_an_answer_in_between_resets_it():
    breaker = Breaker(SETTINGS)
    assert fail(breaker, 0) is None and fail(breaker, 0.1) is None
    assert breaker.observe(Health.UP, None, Permit.NORMAL, 0.2, WALL) is None  # Plum answered: count resets
    assert fail(breaker, 0.3) is None and fail(breaker, 0.4) is None and breaker.counts_against_chunk()
    change = fail(breaker, 0.5)
    assert change is not None and change.opened and change.last_error == "HTTP 503"
    assert not breaker.counts_against_chunk()
    assert breaker.permit(0.6) is None  # no new claims


def test_one_probe_at_a_time_at_doubling_intervals_capped_then_an_accepted_probe_closes():
    breaker = Breaker(SETTINGS)
    for t in (0, 0, 0):
        fail(breaker, t)
    probe_times = []
    now = 0.0
    while len(probe_times) < 5:
        wait = breaker.wait_seconds(now)
        now += wait
        permit = breaker.permit(now)
        assert permit is Permit.PROBE
        assert breaker.permit(now) is None  # a second one waits for the first's answer
        probe_times.append(now)
        fail(breaker, now, Permit.PROBE)
    gaps = [round(b - a, 6) for a, b in zip(probe_times, probe_times[1:])]
    assert probe_times[0] == 1.0 and gaps == [2.0, 4.0, 4.0, 4.0]  # doubling, capped at 4
    permit = breaker.permit(now + breaker.wait_seconds(now))
    change = breaker.observe(Health.UP, None, permit, now + 5, WALL + timedelta(seconds=30))
    assert change is not None and not change.opened and change.probes == 6 and change.outage_seconds == 30
    assert breaker.permit(now + 5) is Permit.NORMAL and breaker.counts_against_chunk()


def test_an_unused_probe_is_given_back():
    breaker = Breaker(SETTINGS)
    for t in (0, 0, 0):
        fail(breaker, t)
    permit = breaker.permit(1.0)
    assert permit is Permit.PROBE and breaker.probes == 1
    breaker.give_back(permit)
    assert breaker.probes == 0 and breaker.permit(1.0) is Permit.PROBE


def test_a_normal_request_claimed_before_the_breaker_opened_stays_home():
    breaker = Breaker(SETTINGS)
    permit = breaker.permit(0)
    for t in (0, 0, 0):
        fail(breaker, t)
    assert not breaker.still_permits(permit)
    assert breaker.still_permits(Permit.PROBE)


def test_retry_after_holds_the_whole_account_and_the_probes():
    breaker = Breaker(SETTINGS)
    breaker.hold(10, 0.0, WALL)
    assert breaker.permit(5.0) is None and breaker.wait_seconds(5.0) == 5.0
    assert breaker.snapshot(5.0).hold_until == WALL + timedelta(seconds=10)
    assert breaker.permit(10.0) is Permit.NORMAL
    for t in (10, 10, 10):
        fail(breaker, t)
    breaker.hold(20, 10.0, WALL)
    assert breaker.wait_seconds(10.0) == 20.0  # later than the first probe (1 s)


def test_snapshot_says_what_admins_read():
    breaker = Breaker(SETTINGS)
    assert breaker.snapshot(0).describe() == "Plum accepting requests"
    for t in (0, 0, 0):
        fail(breaker, t)
    breaker.permit(1.0)
    text = breaker.snapshot(1.0).describe()
    assert text.startswith("waiting for Plum since 14:00:00 UTC (1 probes)") and "HTTP 503" in text


POLICY = RetrySettings(max_tries=2, initial_backoff_seconds=1, max_backoff_seconds=4)


@pytest.mark.parametrize("plan, down_since, expected", [
    # Plum down for everyone: a retry or a give-up becomes a retry not counted, ready at once
    (NextStep(Step.RETRY, WALL, "x"), WALL, NextStep(Step.RETRY, None, "HTTP 503; Plum unavailable since 14:00 UTC: "
                                                      "not counted against max_tries", counted=False)),
    (NextStep(Step.FAILED, None, "x"), WALL, NextStep(Step.RETRY, None, "HTTP 503; Plum unavailable since 14:00 "
                                                       "UTC: not counted against max_tries", counted=False)),
    # Plum accepting others: unchanged
    (NextStep(Step.FAILED, None, "x"), None, NextStep(Step.FAILED, None, "x")),
    # never turns an unknown or a success into a retry
    (NextStep(Step.UNKNOWN, None, "x"), WALL, NextStep(Step.UNKNOWN, None, "x")),
    (NextStep(Step.SUCCEEDED), WALL, NextStep(Step.SUCCEEDED)),
])
def test_during_outage(plan, down_since, expected):
    assert during_outage(plan, 503, None, down_since) == expected


def test_a_chunk_gives_up_only_after_max_tries_counted_attempts():
    rand = random.Random(1)
    # attempt 2 counted -> failed; the same chunk's 2nd attempt with 1 outage try -> counted 1 -> retry
    assert next_step(Outcome.RETRYABLE, 500, None, 2, 10, WALL, POLICY, rand).step is Step.FAILED
    assert next_step(Outcome.RETRYABLE, 500, None, 2 - 1, 10, WALL, POLICY, rand).step is Step.RETRY
