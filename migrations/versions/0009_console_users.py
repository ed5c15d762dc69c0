"""the web console: users, sessions, the sign-in throttle

``console_users`` (name, role admin|viewer, argon2 hash), ``console_sessions``
(SHA-256 of the cookie, CSRF token, expiry) and ``console_login_attempts``
(failed sign-ins, counted per user over the last minute by every daemon).
Two indexes the console's pages read every few seconds: submissions by
``started_at`` (requests in the last minute) and call results by campaign and
status.

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
        batch_op.create_index('ix_call_results_campaign_id_status', ['campaign_id', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('call_results') as batch_op:
        batch_op.drop_index('ix_call_results_campaign_id_status')
    with op.batch_alter_table('submissions') as batch_op:
        batch_op.drop_index('ix_submissions_started_at')
    op.drop_table('console_login_attempts')
    op.drop_table('console_sessions')
    op.drop_table('console_users')
