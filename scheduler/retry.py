"""The retry decision: a pure function of outcome, attempt, Retry-After and config."""

from __future__ import annotations

import enum
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


class Step(str, enum.Enum):
    """What happens to a chunk (and maybe its campaign) after one attempt."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"
    SPLIT = "split"
    REJECTED = "rejected"
    PAUSE_ACCOUNT = "pause_account"
    PAUSE_CAMPAIGN = "pause_campaign"
    FAIL_CAMPAIGN = "fail_campaign"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class NextStep:
    step: Step
    retry_at: datetime | None = None
    message: str | None = None
    counted: bool = True  # False: a failure during a Plum outage, not counted against max_tries


def next_step(
    outcome: Outcome,
    status_code: int | None,
    error: str | None,
    attempt: int,
    contact_count: int,
    now: datetime,
    policy: RetrySettings,
    rand: random.Random,
    retry_after_seconds: float | None = None,
) -> NextStep:
    """The ledger's rule for every outcome (the daemon issue's list), as data."""
    said = plum_said(status_code, error)
    if outcome is Outcome.ACCEPTED:
        return NextStep(Step.SUCCEEDED)
    if outcome is Outcome.RETRYABLE:
        decision = decide(outcome, attempt, now, policy, rand, retry_after_seconds)
        if decision.give_up:
            return NextStep(Step.FAILED, message=f"{decision.reason}; last: {said}")
        return NextStep(Step.RETRY, decision.retry_at, f"{said}; {decision.reason}")
    if outcome is Outcome.REJECTED:
        return NextStep(Step.SPLIT if contact_count > 1 else Step.REJECTED, message=said)
    if outcome is Outcome.AUTH:
        if status_code == 401:
            return NextStep(Step.PAUSE_ACCOUNT, message=f"{said}: fix insight.username / developer_key, "
                            "then set the campaigns back to scheduled")
        return NextStep(Step.PAUSE_CAMPAIGN, message=f"{said}: the account may not queue calls for this survey; "
                        "fix the permission, then set status to scheduled")
    if outcome in (Outcome.CAMPAIGN_INVALID, Outcome.CLIENT_BUG):
        return NextStep(Step.FAIL_CAMPAIGN, message=said)
    return NextStep(Step.UNKNOWN, message=f"{said}: the calls may have been queued; resend only after checking")


def during_outage(plan: NextStep, status_code: int | None, error: str | None,
                  plum_down_since: datetime | None) -> NextStep:
    """While Plum is down for everyone (the breaker open), a retryable failure is not the chunk's:
    it waits for Plum without using up a try (the breaker paces the probes, so no backoff here)."""
    if plum_down_since is None or plan.step not in (Step.RETRY, Step.FAILED):
        return plan
    return NextStep(Step.RETRY, None, f"{plum_said(status_code, error)}; Plum unavailable since "
                    f"{plum_down_since:%H:%M} UTC: not counted against max_tries", counted=False)


def plum_said(status_code: int | None, error: str | None) -> str:
    if status_code is None:
        return error or "no answer"
    return f"HTTP {status_code}" + (f" from Plum: {error}" if error and not error.startswith("HTTP ") else "")


def stop_splitting(rejected: int, accepted: int, limit: int, said: str) -> NextStep | None:
    """Plum refusing request after request of a campaign and accepting none points at the
    request (columns, number format, a field), not at single rows: splitting on would cost
    ~2 requests per contact. Pause the campaign instead (None: go on)."""
    if accepted or limit <= 0 or rejected < limit:
        return None
    return NextStep(Step.PAUSE_CAMPAIGN, message=(
        f"Plum refused the first {rejected} requests of this campaign and accepted none (last: {said}): "
        "the request rather than single numbers is likely at fault (contacts columns, insight.phone_column, "
        "insight.number_format); fix it, then set status to scheduled. If Plum really refuses that many single "
        "numbers, set submission.max_rejections_without_success to 0 and resume"))
