"""times are instants, plain INSERTs work, deleting a campaign keeps its ledger, daemon identity

- PostgreSQL: every time column becomes ``timestamptz`` (existing values read as UTC).
- SQLite: triggers rewrite ``start_at``/``end_at``/``created_at``/``updated_at`` of
  ``campaigns`` into canonical UTC text on every INSERT and UPDATE, whatever form
  an admin wrote (offset, 'T', 'Z', fractions, Unix seconds), so SQL comparisons
  order instants; existing values are rewritten once here.
- ``created_at``/``updated_at`` default to the current time, so an INSERT with only
  the documented columns works.
- ``campaigns.status_seen`` (daemon-owned): lets one daemon log each admin's status change.
- ``workers.host``/``pid``/``version``/``stopped_at``: who runs under an id, so a second
  process never takes a live daemon's id.
- Deleting a campaign: refused while it has submissions; otherwise its chunks and
  contacts go with it and ``campaign_deletions`` records it for the daemon to log.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa
import scheduler.models


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ADMIN_TIME_COLUMNS = ("start_at", "end_at", "created_at", "updated_at")
FMT = "'%Y-%m-%d %H:%M:%f'"
# 26 characters, as the daemon writes them: already canonical, left alone.
CANONICAL_GLOB = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'"
REFUSE_DELETE = (
    "this campaign has submissions to Plum, so deleting it would lose its ledger: "
    "cancel it instead (UPDATE campaigns SET status = 'cancelled' WHERE id = ...)"
)


def _sqlite_instant(x: str) -> str:
    """SQL for the canonical UTC text of value ``x``, or NULL when it denotes no instant."""
    t = f"trim({x})"
    return f"""(CASE
      WHEN typeof({x}) IN ('integer', 'real') THEN strftime({FMT}, {x}, 'unixepoch') || '000'
      WHEN typeof({x}) = 'text' AND {t} <> '' AND {t} NOT GLOB '*[^0-9]*'
        THEN strftime({FMT}, CAST({t} AS INTEGER), 'unixepoch') || '000'
      WHEN typeof({x}) = 'text' AND {t} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
        AND strftime('%Y-%m-%d', julianday(substr({t}, 1, 10))) = substr({t}, 1, 10)
        THEN strftime({FMT}, {t}) || '000'
    END)"""


def _sqlite_canonical(column: str, source: str) -> str:
    """``column = ...``: canonical text, or the value as written when it is no time (the daemon names it)."""
    return (f"{column} = CASE WHEN {source} GLOB {CANONICAL_GLOB} THEN {source} "
            f"ELSE coalesce({_sqlite_instant(source)}, {source}) END")


def _sqlite_upgrade() -> None:
    sets = ", ".join(_sqlite_canonical(c, c) for c in ADMIN_TIME_COLUMNS)
    op.execute(f"UPDATE campaigns SET {sets}")
    on_insert = ", ".join(_sqlite_canonical(c, f"NEW.{c}") for c in ADMIN_TIME_COLUMNS)
    op.execute(f"""CREATE TRIGGER campaigns_instants_on_insert AFTER INSERT ON campaigns
        BEGIN UPDATE campaigns SET {on_insert} WHERE id = NEW.id; END""")
    for column in ("start_at", "end_at"):
        op.execute(f"""CREATE TRIGGER campaigns_{column}_on_update AFTER UPDATE OF {column} ON campaigns
            WHEN NEW.{column} IS NOT OLD.{column}
            BEGIN UPDATE campaigns SET {_sqlite_canonical(column, f"NEW.{column}")} WHERE id = NEW.id; END""")
    op.execute(f"""CREATE TRIGGER campaigns_before_delete BEFORE DELETE ON campaigns
        BEGIN
          SELECT RAISE(ABORT, '{REFUSE_DELETE.replace("'", "''")}')
            WHERE EXISTS (SELECT 1 FROM submissions WHERE campaign_id = OLD.id);
          INSERT INTO campaign_deletions (campaign_id, name, status, chunks_unsent, contacts, deleted_at)
          VALUES (OLD.id, OLD.name, OLD.status,
                  (SELECT count(*) FROM chunks WHERE campaign_id = OLD.id AND status IN ('pending', 'submitting')),
                  (SELECT count(*) FROM contacts WHERE campaign_id = OLD.id),
                  strftime({FMT}, 'now') || '000');
          DELETE FROM contacts WHERE campaign_id = OLD.id;
          DELETE FROM chunks WHERE campaign_id = OLD.id;
        END""")


def _postgresql_upgrade() -> None:
    columns = op.get_bind().execute(sa.text(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND data_type = 'timestamp without time zone'")).all()
    for table, column in columns:
        op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE timestamptz '
                   f'USING "{column}" AT TIME ZONE \'UTC\'')
    # 'infinity', years past 9999 or BC are times PostgreSQL stores but no client can read
    # (nor Plum use): refused when written, naming the rule.
    op.create_check_constraint("times_in_range", "campaigns",
                               "start_at >= '2000-01-01 00:00:00+00' AND end_at < '9000-01-01 00:00:00+00'")
    message = REFUSE_DELETE.replace("WHERE id = ...", "WHERE id = %").replace("'", "''")
    op.execute(f"""CREATE FUNCTION campaigns_before_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF EXISTS (SELECT 1 FROM submissions WHERE campaign_id = OLD.id) THEN
            RAISE EXCEPTION 'campaign %: {message}', OLD.id, OLD.id USING ERRCODE = 'restrict_violation';
          END IF;
          INSERT INTO campaign_deletions (campaign_id, name, status, chunks_unsent, contacts, deleted_at)
          VALUES (OLD.id, OLD.name, OLD.status,
                  (SELECT count(*) FROM chunks WHERE campaign_id = OLD.id AND status IN ('pending', 'submitting')),
                  (SELECT count(*) FROM contacts WHERE campaign_id = OLD.id), now());
          DELETE FROM contacts WHERE campaign_id = OLD.id;
          RETURN OLD;
        END $$""")
    op.execute("CREATE TRIGGER campaigns_before_delete BEFORE DELETE ON campaigns "
               "FOR EACH ROW EXECUTE FUNCTION campaigns_before_delete()")


def upgrade() -> None:
    op.create_table('campaign_deletions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('chunks_unsent', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('contacts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('deleted_at', scheduler.models.UTCDateTime(), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('reported_at', scheduler.models.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_deletions'))
    )
    # SQLite: AUTOINCREMENT, so a deleted campaign's id is never given to a new row (a daemon
    # still finishing work for the old id must not write it into the new campaign).
    with op.batch_alter_table('campaigns', schema=None, recreate='auto',
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.add_column(sa.Column('status_seen', sa.String(length=32), nullable=True))
        for column in ('created_at', 'updated_at'):
            batch_op.alter_column(column, existing_type=scheduler.models.UTCDateTime(), existing_nullable=False,
                                  server_default=sa.text('CURRENT_TIMESTAMP'))
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.alter_column('added_at', existing_type=scheduler.models.UTCDateTime(), existing_nullable=False,
                              server_default=sa.text('CURRENT_TIMESTAMP'))
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim_token', sa.Integer(), server_default=sa.text('0'), nullable=False))
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('version', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('stopped_at', scheduler.models.UTCDateTime(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_upgrade()
    else:
        _postgresql_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("campaigns_instants_on_insert", "campaigns_start_at_on_update",
                        "campaigns_end_at_on_update", "campaigns_before_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    else:
        op.drop_constraint("ck_campaigns_times_in_range", "campaigns", type_="check")
        op.execute("DROP TRIGGER IF EXISTS campaigns_before_delete ON campaigns")
        op.execute("DROP FUNCTION IF EXISTS campaigns_before_delete()")
    with op.batch_alter_table('workers', schema=None) as batch_op:
        for column in ('stopped_at', 'version', 'pid', 'host'):
            batch_op.drop_column(column)
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.drop_column('claim_token')
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.alter_column('added_at', existing_type=scheduler.models.UTCDateTime(), server_default=None)
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        for column in ('created_at', 'updated_at'):
            batch_op.alter_column(column, existing_type=scheduler.models.UTCDateTime(), server_default=None)
        batch_op.drop_column('status_seen')
    op.drop_table('campaign_deletions')
