"""the web console: users, sessions, the sign-in throttle

``console_users`` (name, role admin|viewer, argon2 hash), ``console_sessions``
(SHA-256 of the cookie, CSRF token, expiry) and ``console_login_attempts``
(failed sign-ins, counted per user over the last minute by every daemon).
What the console's pages read every few seconds without scanning: an index on
``submissions.started_at`` (requests in the last minute) and
``call_result_counts`` (call results per campaign and status, kept by triggers
on ``call_results`` on both databases, filled from the rows already there).

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa
import scheduler.models


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('password_hash', sa.Text(), nullable=False),
        sa.Column('created_at', scheduler.models.UTCDateTime(), nullable=False),
        sa.Column('password_changed_at', scheduler.models.UTCDateTime(), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'viewer')", name=op.f('ck_console_users_role')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_console_users')),
        sa.UniqueConstraint('name', name=op.f('uq_console_users_name')),
    )
    op.create_table(
        'console_sessions',
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('csrf_token', sa.String(length=64), nullable=False),
        sa.Column('created_at', scheduler.models.UTCDateTime(), nullable=False),
        sa.Column('expires_at', scheduler.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['console_users.id'],
                                name=op.f('fk_console_sessions_user_id_console_users'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('token_sha256', name=op.f('pk_console_sessions')),
    )
    with op.batch_alter_table('console_sessions') as batch_op:
        batch_op.create_index(batch_op.f('ix_console_sessions_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_console_sessions_expires_at'), ['expires_at'], unique=False)
    op.create_table(
        'console_login_attempts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=100), nullable=False),
        sa.Column('attempted_at', scheduler.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_console_login_attempts')),
    )
    with op.batch_alter_table('console_login_attempts') as batch_op:
        batch_op.create_index(batch_op.f('ix_console_login_attempts_username_attempted_at'),
                              ['username', 'attempted_at'], unique=False)
    with op.batch_alter_table('submissions') as batch_op:
        batch_op.create_index('ix_submissions_started_at', ['started_at'], unique=False)
    with op.batch_alter_table('call_results') as batch_op:
        batch_op.create_index('ix_call_results_campaign_id_id', ['campaign_id', 'id'], unique=False)
    op.create_table(
        'call_result_counts',
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=32), nullable=False),
        sa.Column('results', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
        sa.PrimaryKeyConstraint('campaign_id', 'status', name=op.f('pk_call_result_counts')),
    )
    op.execute("INSERT INTO call_result_counts (campaign_id, status, results) "
               "SELECT campaign_id, coalesce(status, ''), count(*) FROM call_results "
               "GROUP BY campaign_id, coalesce(status, '')")
    for statement in (_POSTGRES_TRIGGERS if op.get_bind().dialect.name == 'postgresql' else _SQLITE_TRIGGERS):
        op.execute(statement)


# Every insert and delete of a call result, by the daemon or an admin's SQL, moves its counter.
_SQLITE_TRIGGERS = (
    """CREATE TRIGGER call_results_counted AFTER INSERT ON call_results BEGIN
         INSERT INTO call_result_counts (campaign_id, status, results)
         VALUES (NEW.campaign_id, coalesce(NEW.status, ''), 1)
         ON CONFLICT (campaign_id, status) DO UPDATE SET results = results + 1;
       END""",
    """CREATE TRIGGER call_results_uncounted AFTER DELETE ON call_results BEGIN
         UPDATE call_result_counts SET results = results - 1
         WHERE campaign_id = OLD.campaign_id AND status = coalesce(OLD.status, '');
       END""",
)
# PostgreSQL: per statement, from its transition table, so that a bulk INSERT of a million
# rows moves each counter once (a row trigger updating one counter row a million times in one
# transaction took minutes); rows are locked in one order, so concurrent statements never deadlock.
_POSTGRES_TRIGGERS = (
    """CREATE FUNCTION count_call_results_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO call_result_counts (campaign_id, status, results)
         SELECT campaign_id, coalesce(status, ''), count(*) FROM inserted_rows GROUP BY 1, 2 ORDER BY 1, 2
         ON CONFLICT (campaign_id, status) DO UPDATE SET results = call_result_counts.results + EXCLUDED.results;
         RETURN NULL;
       END $$""",
    """CREATE FUNCTION count_call_results_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         UPDATE call_result_counts SET results = call_result_counts.results - gone.results
         FROM (SELECT campaign_id, coalesce(status, '') AS status, count(*) AS results FROM deleted_rows
               GROUP BY 1, 2 ORDER BY 1, 2) AS gone
         WHERE call_result_counts.campaign_id = gone.campaign_id AND call_result_counts.status = gone.status;
         RETURN NULL;
       END $$""",
    """CREATE TRIGGER call_results_counted AFTER INSERT ON call_results REFERENCING NEW TABLE AS inserted_rows
       FOR EACH STATEMENT EXECUTE FUNCTION count_call_results_inserted()""",
    """CREATE TRIGGER call_results_uncounted AFTER DELETE ON call_results REFERENCING OLD TABLE AS deleted_rows
       FOR EACH STATEMENT EXECUTE FUNCTION count_call_results_deleted()""",
)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER call_results_counted ON call_results")
        op.execute("DROP TRIGGER call_results_uncounted ON call_results")
        op.execute("DROP FUNCTION count_call_results_inserted()")
        op.execute("DROP FUNCTION count_call_results_deleted()")
    else:
        op.execute("DROP TRIGGER call_results_counted")
        op.execute("DROP TRIGGER call_results_uncounted")
    op.drop_table('call_result_counts')
    with op.batch_alter_table('call_results') as batch_op:
        batch_op.drop_index('ix_call_results_campaign_id_id')
    with op.batch_alter_table('submissions') as batch_op:
        batch_op.drop_index('ix_submissions_started_at')
    op.drop_table('console_login_attempts')
    op.drop_table('console_sessions')
    op.drop_table('console_users')
