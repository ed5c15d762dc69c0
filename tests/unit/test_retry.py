import random
from datetime import datetime, timedelta, timezone

import pytest

from scheduler.config import RetrySettings
from scheduler.models import Outcome
from scheduler.retry import Step, backoff_seconds, decide, stop_splitting

NOW = datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)
POLICY = RetrySettings(max_tries=5, initial_backoff_seconds=1.0, max_backoff_seconds=60.0, max_retry_after_seconds=300)


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.RETRYABLE])
def test_only_retryable_outcomes_are_retried(outcome):
    decision = decide(outcome, 1, NOW, POLICY, random.Random(1))
    assert decision.give_up
    assert outcome.value in decision.reason


@pytest.mark.parametrize(
    "attempt, low, high",
    [(1, 1.0, 1.0), (2, 1.0, 2.0), (3, 1.0, 4.0), (4, 1.0, 8.0)],
)
def test_backoff_grows_exponentially_with_full_jitter(attempt, low, high):
    rand = random.Random(42)
    delays = [backoff_seconds(attempt, POLICY, rand) for _ in range(500)]
    assert low <= min(delays) and max(delays) <= high
    if high > low:
        assert max(delays) - min(delays) > 0.8 * (high - low)  # jitter spans the range


def test_backoff_is_capped():
    rand = random.Random(7)
    assert max(backoff_seconds(30, POLICY, rand) for _ in range(200)) <= 60.0


def test_gives_up_at_max_tries():
    rand = random.Random(3)
    assert not decide(Outcome.RETRYABLE, 4, NOW, POLICY, rand).give_up
    final = decide(Outcome.RETRYABLE, 5, NOW, POLICY, rand)
    assert final.give_up and final.reason == "gave up after 5 attempts"
    assert decide(Outcome.RETRYABLE, 1, NOW, RetrySettings(max_tries=1), rand).give_up


def test_same_seed_same_schedule():
    a = [decide(Outcome.RETRYABLE, n, NOW, POLICY, random.Random(9)).retry_at for n in range(1, 5)]
    b = [decide(Outcome.RETRYABLE, n, NOW, POLICY, random.Random(9)).retry_at for n in range(1, 5)]
    assert a == b


@pytest.mark.parametrize(
    "retry_after, expected",
    [(30.0, 30.0), (0.0, 1.0), (10_000.0, 300.0)],
)
def test_retry_after_is_honoured_and_capped(retry_after, expected):
    decision = decide(Outcome.RETRYABLE, 1, NOW, POLICY, random.Random(0), retry_after_seconds=retry_after)
    assert decision.retry_at == NOW + timedelta(seconds=expected)


@pytest.mark.parametrize(
    "rejected, accepted, limit, pauses",
    [
        (19, 0, 20, False),
        (20, 0, 20, True),  # twenty refusals and not one acceptance: the request is at fault
        (500, 1, 20, False),  # one accepted request: the refusals are about rows, split on
        (1000, 0, 0, False),  # 0: never
        (1, 0, 1, True),
    ],
)
def test_stop_splitting(rejected, accepted, limit, pauses):
    step = stop_splitting(rejected, accepted, limit, "HTTP 400 from Plum: uploaded CSV was invalid")
    assert (step is not None) == pauses
    if pauses:
        assert step.step is Step.PAUSE_CAMPAIGN
        assert f"refused the first {rejected} requests" in step.message
        assert "uploaded CSV was invalid" in step.message and "max_rejections_without_success" in step.message
