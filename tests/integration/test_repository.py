"""Repository contract, run on SQLite and PostgreSQL alike."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from scheduler.errors import NotFound, UserError
from scheduler.models import CampaignStatus
from scheduler.repository import NewCampaign

T0 = datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)


def new_campaign(**overrides) -> NewCampaign:
    fields = dict(
        name="winter survey",
        survey_id="1234",
        instance_id="5",
        contacts_path="/data/contacts.csv",
        start_at=T0,
        end_at=T0 + timedelta(hours=3),
        max_attempts=3,
        reattempt_wait=600,
        result_url="https://example.invalid/results",
    )
    fields.update(overrides)
    return NewCampaign(**fields)


async def test_create_then_get_round_trips_every_field(repo):
    created = await repo.create_campaign(new_campaign())
    row = await repo.get_campaign(created.id)
    assert (row.name, row.survey_id, row.instance_id, row.contacts_path) == (
        "winter survey",
        "1234",
        "5",
        "/data/contacts.csv",
    )
    assert row.start_at == T0 and row.start_at.tzinfo is not None
    assert row.end_at == T0 + timedelta(hours=3)
    assert (row.max_attempts, row.reattempt_wait, row.result_url) == (3, 600, "https://example.invalid/results")
    assert row.status == "scheduled"
    assert row.last_error is None


async def test_admin_written_rows_use_column_defaults_and_plain_utc_text(repo):
    async with repo.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at, "
                "created_at, updated_at) VALUES ('by hand', '1', '2', '/c.csv', '2026-12-01 14:00:00', "
                "'2026-12-01 17:00:00', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
            )
        )
    (row,) = await repo.list_campaigns()
    assert row.status == "scheduled"
    assert row.max_attempts == 1
    assert row.reattempt_wait is None
    assert row.start_at == T0


@pytest.mark.parametrize(
    "start, target, allowed",
    [
        ("scheduled", CampaignStatus.PAUSED, True),
        ("running", CampaignStatus.PAUSED, True),
        ("completed", CampaignStatus.PAUSED, False),
        ("paused", CampaignStatus.SCHEDULED, True),
        ("draft", CampaignStatus.SCHEDULED, True),
        ("running", CampaignStatus.SCHEDULED, False),
        ("running", CampaignStatus.CANCELLED, True),
        ("failed", CampaignStatus.CANCELLED, False),
    ],
)
async def test_status_changes_allowed_from_the_cli(repo, start, target, allowed):
    row = await repo.create_campaign(new_campaign(status=start))
    if allowed:
        assert (await repo.change_status(row.id, target)).status == target.value
    else:
        with pytest.raises(UserError, match=f"is {start}"):
            await repo.change_status(row.id, target)
        assert (await repo.get_campaign(row.id)).status == start


async def test_unknown_campaign_is_a_clear_error(repo):
    with pytest.raises(NotFound, match="no campaign with id 42"):
        await repo.get_campaign(42)
    with pytest.raises(NotFound):
        await repo.change_status(42, CampaignStatus.PAUSED)
