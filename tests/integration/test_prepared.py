"""Prepared statements (scheduler/prepared.py) give what SQLAlchemy gives: on SQLite they run on
the driver's own cursor, on PostgreSQL through SQLAlchemy; the same checks hold for both."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, NoResultFound, StatementError

from scheduler.ledger import hot_sql
from scheduler.models import Chunk, UTCDateTime
from scheduler.prepared import Prepared
from scheduler.repository import NewCampaign
from tests.support.harness import execute

NOW = datetime(2026, 12, 4, 21, 30, 15, 123456, tzinfo=timezone.utc)


async def in_ledger(repo, function, *args):
    return await repo._ledger(function, *args)


async def a_campaign(repo):
    return await repo.create_campaign(NewCampaign("p", "1", "2", "/x.csv", NOW - timedelta(hours=1),
                                                  NOW + timedelta(hours=1)))


ADD_CHUNKS = Prepared(insert(Chunk).values(
    campaign_id=bindparam("campaign_id"), seq=bindparam("seq"), status="pending", contact_count=3, attempts=0,
    claim_token=0, outage_tries=0,
    created_at=bindparam("now", type_=UTCDateTime()), updated_at=bindparam("now", type_=UTCDateTime()),
    window_end_at=bindparam("window_end_at", type_=UTCDateTime())).returning(Chunk.id, Chunk.window_end_at))
MOVE = Prepared(update(Chunk).where(Chunk.id.in_(bindparam("ids", expanding=True)))
                .values(status="cancelled", updated_at=bindparam("b_now", type_=UTCDateTime()))
                .returning(Chunk.id, Chunk.updated_at))
READ = Prepared(select(Chunk.id, Chunk.status, Chunk.updated_at, Chunk.window_end_at)
                .where(Chunk.campaign_id == bindparam("campaign_id")).order_by(Chunk.seq))


async def test_values_times_lists_and_returning_are_as_sqlalchemy_gives_them(repo):
    campaign = await a_campaign(repo)

    def work(conn):
        added = [ADD_CHUNKS.run(conn, {"campaign_id": campaign.id, "seq": seq, "now": NOW,
                                       "window_end_at": None if seq else NOW + timedelta(minutes=5)}).one()
                 for seq in range(3)]
        moved = MOVE.run(conn, {"ids": [added[0].id, added[2].id], "b_now": NOW + timedelta(seconds=1)}).all()
        nothing = MOVE.run(conn, {"ids": [], "b_now": NOW}).all()  # an empty IN list: no row, no error
        return added, moved, nothing, READ.run(conn, {"campaign_id": campaign.id}).all()

    added, moved, nothing, rows = await in_ledger(repo, work)
    assert added[0].window_end_at == NOW + timedelta(minutes=5) and added[1].window_end_at is None
    assert sorted(row.id for row in moved) == [added[0].id, added[2].id]
    assert all(row.updated_at == NOW + timedelta(seconds=1) for row in moved)
    assert nothing == []
    assert [(row.status, row.updated_at) for row in rows] == [
        ("cancelled", NOW + timedelta(seconds=1)), ("pending", NOW), ("cancelled", NOW + timedelta(seconds=1))]
    # what SQLAlchemy itself reads back is the same
    async with repo.engine.connect() as conn:
        through_orm = (await conn.execute(select(Chunk.updated_at).order_by(Chunk.seq))).scalars().all()
    assert through_orm == [row.updated_at for row in rows]


async def test_a_missing_value_is_an_error_not_null(repo):
    campaign = await a_campaign(repo)
    with pytest.raises(StatementError, match="seq"):
        await in_ledger(repo, lambda conn: ADD_CHUNKS.run(conn, {"campaign_id": campaign.id, "now": NOW,
                                                                  "window_end_at": None}))
    with pytest.raises(NoResultFound):
        await in_ledger(repo, lambda conn: READ.run(conn, {"campaign_id": -1}).one())


async def test_the_hot_statements_read_what_an_admin_wrote_with_sql(repo):
    """A campaign row typed in psql/sqlite3 (text times with an offset) is read by the claim's
    prepared statement as the same instant."""
    await execute(repo, "INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at, "
                        "status, ingested_at) VALUES ('sql', '5', '6', '/y.csv', '2026-12-04 20:00:00+02:00', "
                        "'2099-12-04 23:00:00-05:00', 'running', '2026-12-04 18:00:00')")
    rows = await in_ledger(repo, lambda conn: hot_sql(conn).running.run(conn, {"now": NOW}).all())
    [row] = [r for r in rows if r.survey_id == "5"]
    assert row.start_at == datetime(2026, 12, 4, 18, 0, tzinfo=timezone.utc)
    assert row.end_at == datetime(2099, 12, 5, 4, 0, tzinfo=timezone.utc)


async def test_a_driver_error_is_raised_as_sqlalchemy_raises_it(repo):
    """The repository and the dispatcher recognise SQLAlchemy's exceptions (an outage, a lock,
    a constraint): the driver's own cursor must raise the same kinds."""
    campaign = await a_campaign(repo)
    values = {"campaign_id": campaign.id, "seq": 0, "now": NOW, "window_end_at": None}
    await in_ledger(repo, lambda conn: ADD_CHUNKS.run(conn, values))
    with pytest.raises(IntegrityError) as raised:
        await in_ledger(repo, lambda conn: ADD_CHUNKS.run(conn, values))  # (campaign_id, seq) is unique
    assert "unique" in str(raised.value.orig).lower()
    # the failed transaction left nothing half-done, and the next one works
    rows = await in_ledger(repo, lambda conn: READ.run(conn, {"campaign_id": campaign.id}).all())
    assert [row.status for row in rows] == ["pending"]
