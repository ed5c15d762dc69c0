"""The retry decision: a pure function of outcome, attempt, Retry-After and config."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from .config import RetrySettings
from .models import Outcome


@dataclass(frozen=True)
class RetryDecision:
    retry_at: datetime | None
    reason: str

    @property
    def give_up(self) -> bool:
        return self.retry_at is None


def backoff_seconds(attempt: int, policy: RetrySettings, rand: random.Random) -> float:
    """Exponential backoff with full jitter between the initial and the capped delay."""
    ceiling = min(policy.max_backoff_seconds, policy.initial_backoff_seconds * 2 ** max(0, attempt - 1))
    return rand.uniform(policy.initial_backoff_seconds, ceiling)


def decide(
    outcome: Outcome,
    attempt: int,
    now: datetime,
    policy: RetrySettings,
    rand: random.Random,
    retry_after_seconds: float | None = None,
) -> RetryDecision:
    """``attempt`` is the number of attempts made so far, this one included."""
    if outcome is not Outcome.RETRYABLE:
        return RetryDecision(None, f"{outcome.value} is not retried")
    if attempt >= policy.max_tries:
        return RetryDecision(None, f"gave up after {attempt} attempts")
    delay = backoff_seconds(attempt, policy, rand)
    if retry_after_seconds is not None:
        # Plum asked for a pause: honour it, but never wait longer than the cap.
        delay = max(delay, min(retry_after_seconds, policy.max_retry_after_seconds))
    return RetryDecision(now + timedelta(seconds=delay), f"retry {attempt + 1} of {policy.max_tries} in {delay:.1f}s")
